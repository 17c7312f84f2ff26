DROP INDEX journal_entries_by_reversed;
DROP INDEX top_ups_by_status;
ALTER TABLE top_ups DROP COLUMN paid_currency;
ALTER TABLE top_ups DROP COLUMN paid_cents;
ALTER TABLE top_ups DROP CONSTRAINT top_ups_status_check;
UPDATE top_ups SET status = 'pending' WHERE status IN ('amount_mismatch', 'expired');
UPDATE top_ups SET status = 'failed' WHERE status = 'rejected';
ALTER TABLE top_ups ADD CONSTRAINT top_ups_status_check CHECK (status IN ('pending', 'paid', 'failed', 'refunded', 'disputed'));
