DROP INDEX journal_entries_by_reversed;
CREATE TABLE top_ups_old (
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
INSERT INTO top_ups_old (id, wallet_account_id, wallet_id, created_by, pack_id, credits, bonus_credits, amount_cents, currency, method, status, request_key, checkout_session_id, checkout_url, payment_intent_id, receipt_number, credited_entry_id, settled_by, refunded_cents, reversed_credits, reversed_bonus, dispute_id, disputed_credits, disputed_bonus, created_at, updated_at, paid_at)
    SELECT id, wallet_account_id, wallet_id, created_by, pack_id, credits, bonus_credits, amount_cents,
           currency, method,
           CASE status WHEN 'amount_mismatch' THEN 'pending' WHEN 'expired' THEN 'pending'
                       WHEN 'rejected' THEN 'failed' ELSE status END,
           request_key, checkout_session_id, checkout_url, payment_intent_id, receipt_number,
           credited_entry_id, settled_by, refunded_cents, reversed_credits, reversed_bonus, dispute_id,
           disputed_credits, disputed_bonus, created_at, updated_at, paid_at
    FROM top_ups;
DROP TABLE top_ups;
ALTER TABLE top_ups_old RENAME TO top_ups;
CREATE INDEX top_ups_by_payment_intent ON top_ups (payment_intent_id);
CREATE INDEX top_ups_by_wallet ON top_ups (wallet_account_id, created_at);
