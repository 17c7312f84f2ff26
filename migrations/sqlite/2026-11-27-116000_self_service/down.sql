DROP INDEX charges_by_payer_time;
DROP INDEX subscriptions_by_customer;
ALTER TABLE subscriptions DROP COLUMN cancel_at_period_end;
ALTER TABLE subscriptions DROP COLUMN customer;
