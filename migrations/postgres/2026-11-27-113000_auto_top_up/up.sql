-- Auto top-up: a wallet's settings (read by the same guarded UPDATE that
-- moves its balance, so a charge pays no extra query when it is off), the
-- Stripe customer and saved payment method, the consecutive failures, and
-- the orders recorded when a movement left the balance below the
-- threshold. At most one order per wallet is open (pending or processing):
-- the partial unique index, with an insert that does nothing on conflict.
ALTER TABLE accounts ADD COLUMN auto_top_up_enabled BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE accounts ADD COLUMN auto_top_up_threshold BIGINT;
ALTER TABLE accounts ADD COLUMN auto_top_up_pack_id TEXT;
ALTER TABLE accounts ADD COLUMN auto_top_up_validity TEXT;
ALTER TABLE accounts ADD COLUMN auto_top_up_failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN auto_top_up_disabled_reason TEXT;
ALTER TABLE accounts ADD COLUMN stripe_customer_id TEXT;
ALTER TABLE accounts ADD COLUMN stripe_payment_method_id TEXT;

CREATE TABLE auto_top_up_orders (
    id TEXT PRIMARY KEY,
    wallet_account_id BIGINT NOT NULL REFERENCES accounts(id),
    status TEXT NOT NULL CHECK (status IN ('pending', 'processing', 'paid', 'failed', 'canceled')),
    top_up_id TEXT REFERENCES top_ups(id),
    payment_intent_id TEXT,
    failure_reason TEXT,
    send_attempts INTEGER NOT NULL DEFAULT 0,
    send_lease_until TIMESTAMP,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
CREATE UNIQUE INDEX auto_top_up_orders_one_open ON auto_top_up_orders (wallet_account_id)
    WHERE status IN ('pending', 'processing');
CREATE INDEX auto_top_up_orders_to_send ON auto_top_up_orders (created_at) WHERE status = 'pending';
CREATE INDEX auto_top_up_orders_by_wallet ON auto_top_up_orders (wallet_account_id, created_at);
