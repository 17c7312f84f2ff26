-- Payment orders for credit packs (Stripe Checkout or manual), their
-- gap-free receipt numbers, and the Stripe events already processed.
CREATE TABLE top_ups (
    id TEXT PRIMARY KEY,
    wallet_account_id BIGINT NOT NULL REFERENCES accounts(id),
    wallet_id TEXT NOT NULL,
    created_by TEXT NOT NULL,
    pack_id TEXT NOT NULL,
    credits BIGINT NOT NULL CHECK (credits > 0),
    bonus_credits BIGINT NOT NULL CHECK (bonus_credits >= 0),
    amount_cents BIGINT NOT NULL CHECK (amount_cents > 0),
    currency TEXT NOT NULL,
    method TEXT NOT NULL CHECK (method IN ('stripe', 'manual')),
    status TEXT NOT NULL CHECK (status IN ('pending', 'paid', 'failed', 'refunded', 'disputed')),
    request_key TEXT UNIQUE,
    checkout_session_id TEXT UNIQUE,
    checkout_url TEXT,
    payment_intent_id TEXT,
    receipt_number BIGINT UNIQUE,
    credited_entry_id BIGINT REFERENCES journal_entries(id),
    settled_by TEXT,
    refunded_cents BIGINT NOT NULL DEFAULT 0,
    reversed_credits BIGINT NOT NULL DEFAULT 0,
    reversed_bonus BIGINT NOT NULL DEFAULT 0,
    dispute_id TEXT,
    disputed_credits BIGINT NOT NULL DEFAULT 0,
    disputed_bonus BIGINT NOT NULL DEFAULT 0,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    paid_at TIMESTAMP
);
CREATE INDEX top_ups_by_payment_intent ON top_ups (payment_intent_id);
CREATE INDEX top_ups_by_wallet ON top_ups (wallet_account_id, created_at);

-- One row: the last receipt number given. Taken in the settling
-- transaction, so a rolled-back settlement gives its number back.
CREATE TABLE receipt_counter (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_number BIGINT NOT NULL
);
INSERT INTO receipt_counter (id, last_number) VALUES (1, 0);

CREATE TABLE stripe_events (
    id TEXT PRIMARY KEY,
    event_type TEXT NOT NULL,
    outcome TEXT NOT NULL,
    received_at TIMESTAMP NOT NULL
);
