-- Top-up states for a payment that does not match its order
-- (amount_mismatch, then settled at the paid amount or rejected by an
-- operator) and for an abandoned Checkout (expired); what such a payment
-- paid; an index for the entries that reverse another (ledger verify
-- follows them per top-up). SQLite cannot change a CHECK constraint: the
-- table is rebuilt (no table refers to it).
CREATE TABLE top_ups_new (
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
    status TEXT NOT NULL CHECK (status IN ('pending', 'paid', 'failed', 'refunded', 'disputed', 'amount_mismatch', 'rejected', 'expired')),
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
    paid_at TIMESTAMP,
    paid_cents BIGINT,
    paid_currency TEXT
);
INSERT INTO top_ups_new (id, wallet_account_id, wallet_id, created_by, pack_id, credits, bonus_credits, amount_cents, currency, method, status, request_key, checkout_session_id, checkout_url, payment_intent_id, receipt_number, credited_entry_id, settled_by, refunded_cents, reversed_credits, reversed_bonus, dispute_id, disputed_credits, disputed_bonus, created_at, updated_at, paid_at)
    SELECT id, wallet_account_id, wallet_id, created_by, pack_id, credits, bonus_credits, amount_cents, currency, method, status, request_key, checkout_session_id, checkout_url, payment_intent_id, receipt_number, credited_entry_id, settled_by, refunded_cents, reversed_credits, reversed_bonus, dispute_id, disputed_credits, disputed_bonus, created_at, updated_at, paid_at FROM top_ups;
DROP TABLE top_ups;
ALTER TABLE top_ups_new RENAME TO top_ups;
CREATE INDEX top_ups_by_payment_intent ON top_ups (payment_intent_id);
CREATE INDEX top_ups_by_wallet ON top_ups (wallet_account_id, created_at);
CREATE INDEX top_ups_by_status ON top_ups (status, id);
CREATE INDEX journal_entries_by_reversed ON journal_entries (reverses_entry_id)
    WHERE reverses_entry_id IS NOT NULL;
