DROP INDEX credit_grants_due;
DROP INDEX credit_grants_live;
ALTER TABLE credit_grants DROP COLUMN live;
CREATE INDEX credit_grants_live ON credit_grants (account_id) WHERE remaining > 0;
CREATE INDEX credit_grants_due ON credit_grants (expires_at) WHERE remaining > 0 AND expires_at IS NOT NULL;
