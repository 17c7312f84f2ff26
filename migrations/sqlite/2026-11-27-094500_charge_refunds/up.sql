-- Operators' refunds of charges: what each took back from where (the
-- infra, the marketplace share, and the creator's part from pending or
-- available earnings or borne by the platform).
CREATE TABLE charge_refunds (
    id TEXT PRIMARY KEY,
    charge_id TEXT NOT NULL REFERENCES charges(id),
    amount BIGINT NOT NULL CHECK (amount >= 0),
    infra BIGINT NOT NULL,
    platform_share BIGINT NOT NULL,
    creator_from_pending BIGINT NOT NULL,
    creator_from_available BIGINT NOT NULL,
    creator_borne_by_platform BIGINT NOT NULL,
    free_message_returned BOOLEAN NOT NULL,
    entry_id BIGINT REFERENCES journal_entries(id),
    reason TEXT NOT NULL,
    operator_id TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX charge_refunds_by_charge ON charge_refunds (charge_id);
