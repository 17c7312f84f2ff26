-- Top-up states for a payment that does not match its order
-- (amount_mismatch, then settled at the paid amount or rejected by an
-- operator) and for an abandoned Checkout (expired); what such a payment
-- paid; an index for the entries that reverse another (ledger verify
-- follows them per top-up).
ALTER TABLE top_ups DROP CONSTRAINT top_ups_status_check;
ALTER TABLE top_ups ADD CONSTRAINT top_ups_status_check
    CHECK (status IN ('pending', 'paid', 'failed', 'refunded', 'disputed', 'amount_mismatch', 'rejected', 'expired'));
ALTER TABLE top_ups ADD COLUMN paid_cents BIGINT;
ALTER TABLE top_ups ADD COLUMN paid_currency TEXT;
CREATE INDEX top_ups_by_status ON top_ups (status, id);
CREATE INDEX journal_entries_by_reversed ON journal_entries (reverses_entry_id)
    WHERE reverses_entry_id IS NOT NULL;
