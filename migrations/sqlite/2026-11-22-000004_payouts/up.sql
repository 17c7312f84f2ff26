-- Stripe Connect accounts of creator organizations, and their payouts.
CREATE TABLE payout_accounts (
    org_id TEXT PRIMARY KEY REFERENCES orgs(id),
    stripe_account_id TEXT NOT NULL UNIQUE,
    payouts_enabled BOOLEAN NOT NULL DEFAULT FALSE,
    details_submitted BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);

-- A payout is recorded (and its credits moved to in-payout) before the
-- Stripe Transfer is sent; `send_lease_until` keeps two senders (the
-- request and a recovery sweep, or two instances) from sending at once.
CREATE TABLE payouts (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    stripe_account_id TEXT NOT NULL,
    amount BIGINT NOT NULL CHECK (amount > 0),
    usd_cents BIGINT NOT NULL CHECK (usd_cents > 0),
    status TEXT NOT NULL CHECK (status IN ('pending', 'in_transit', 'paid', 'failed')),
    request_key TEXT UNIQUE,
    requested_by TEXT NOT NULL,
    transfer_id TEXT UNIQUE,
    stripe_payout_id TEXT,
    failure_reason TEXT,
    send_attempts INTEGER NOT NULL DEFAULT 0,
    send_lease_until TIMESTAMP,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
CREATE INDEX payouts_by_org ON payouts (org_id, created_at);
CREATE INDEX payouts_unsent ON payouts (status, send_lease_until);
