-- Whether a grant has anything left, as a generated column that the
-- partial indexes of live grants filter on instead of `remaining > 0`.
-- A draw changes `remaining` on every charge; with `remaining` in an
-- index predicate, PostgreSQL could not update the row in place (HOT) and
-- added an entry to every index of the table per draw. `live` changes
-- only when a grant runs out or is given credits back.
ALTER TABLE credit_grants ADD COLUMN live BOOLEAN GENERATED ALWAYS AS (remaining > 0) STORED;
DROP INDEX credit_grants_live;
DROP INDEX credit_grants_due;
CREATE INDEX credit_grants_live ON credit_grants (account_id) WHERE live;
CREATE INDEX credit_grants_due ON credit_grants (expires_at) WHERE live AND expires_at IS NOT NULL;
