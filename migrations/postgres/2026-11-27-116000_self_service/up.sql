-- Self-service. A subscription keeps the Stripe customer that pays it (the
-- Billing Portal opens for that customer) and whether it ends at the close
-- of its period. Usage reports read a wallet's charges by time.
ALTER TABLE subscriptions ADD COLUMN customer TEXT;
ALTER TABLE subscriptions ADD COLUMN cancel_at_period_end BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX subscriptions_by_customer ON subscriptions (customer);
CREATE INDEX charges_by_payer_time ON charges (payer_account_id, created_at);
