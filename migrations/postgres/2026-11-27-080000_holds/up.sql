-- Holds: credits reserved on a wallet before a metered message's work and
-- captured (charged) or released after it. The reserved amount sits in the
-- wallet's "held" account; a hold leaves "open" exactly once, by a guarded
-- status change (capture, release, or the expiry sweep).
CREATE TABLE holds (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL REFERENCES agents(id),
    user_id TEXT NOT NULL,
    payer_account_id BIGINT NOT NULL REFERENCES accounts(id),
    held_account_id BIGINT NOT NULL REFERENCES accounts(id),
    payer_org_id TEXT,
    amount BIGINT NOT NULL CHECK (amount >= 0),
    free BOOLEAN NOT NULL,
    estimate TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'captured', 'released', 'expired')),
    expires_at TIMESTAMP NOT NULL,
    day_key TEXT NOT NULL,
    week_key TEXT NOT NULL,
    request_key TEXT,
    charge_id TEXT,
    created_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP
);
CREATE INDEX holds_open_by_expiry ON holds (expires_at) WHERE status = 'open';
CREATE INDEX holds_by_held_account ON holds (held_account_id) WHERE status = 'open';

-- A charge made by capturing a hold: the hold, what it had reserved, and
-- what the wallet could not cover (borne by the platform).
ALTER TABLE charges ADD COLUMN hold_id TEXT;
ALTER TABLE charges ADD COLUMN held BIGINT NOT NULL DEFAULT 0;
ALTER TABLE charges ADD COLUMN uncollected BIGINT NOT NULL DEFAULT 0;
