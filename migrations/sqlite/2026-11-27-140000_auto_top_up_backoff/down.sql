DROP INDEX auto_top_up_orders_processing;
ALTER TABLE accounts DROP COLUMN auto_top_up_retry_after;
