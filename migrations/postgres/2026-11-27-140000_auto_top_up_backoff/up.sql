-- Auto top-up after a failed payment: the wallet orders again only after
-- `auto_top_up_retry_after` (set at each failure, growing with the
-- failures in a row; cleared by a success, a new card or re-enabling), so a
-- declined card is not retried on every charge. The partial index finds
-- the orders left `processing` (no webhook seen) for the reconciliation.
ALTER TABLE accounts ADD COLUMN auto_top_up_retry_after TIMESTAMP;
CREATE INDEX auto_top_up_orders_processing ON auto_top_up_orders (updated_at) WHERE status = 'processing';
