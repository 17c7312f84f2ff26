-- Operators' freezes and unfreezes of wallets, with their reason and who
-- made them (adjustments are audited by their journal entries).
CREATE TABLE wallet_audit (
    id BIGSERIAL PRIMARY KEY,
    account_id BIGINT NOT NULL REFERENCES accounts(id),
    action TEXT NOT NULL CHECK (action IN ('freeze', 'unfreeze')),
    reason TEXT NOT NULL,
    actor TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX wallet_audit_by_account ON wallet_audit (account_id, id);
