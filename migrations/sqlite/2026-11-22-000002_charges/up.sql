-- The price book, agents, message charges, free-message and spend counters,
-- and creator earnings accruals.
CREATE TABLE models (
    id TEXT PRIMARY KEY,
    runtime_infra BIGINT NOT NULL CHECK (runtime_infra >= 0),
    provider_cost_micro_usd BIGINT NOT NULL CHECK (provider_cost_micro_usd >= 0),
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);

CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    name TEXT NOT NULL,
    model_id TEXT NOT NULL REFERENCES models(id),
    visibility TEXT NOT NULL CHECK (visibility IN ('private', 'public')),
    publisher_addon BIGINT NOT NULL CHECK (publisher_addon >= 0),
    free_messages INTEGER NOT NULL CHECK (free_messages >= 0),
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
CREATE INDEX agents_by_org ON agents (org_id);
CREATE INDEX agents_marketplace ON agents (visibility, created_at, id);

-- One row per (agent, person): how many free messages they used.
CREATE TABLE free_message_usage (
    agent_id TEXT NOT NULL REFERENCES agents(id),
    user_id TEXT NOT NULL,
    used INTEGER NOT NULL,
    PRIMARY KEY (agent_id, user_id)
);

-- Spend per wallet (user_id = '') and per org member, per UTC day
-- ('2026-11-22') and ISO week ('2026-W47').
CREATE TABLE spend_counters (
    account_id BIGINT NOT NULL REFERENCES accounts(id),
    user_id TEXT NOT NULL,
    period TEXT NOT NULL,
    spent BIGINT NOT NULL,
    PRIMARY KEY (account_id, user_id, period)
);

-- Each charge with the prices it used.
CREATE TABLE charges (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL REFERENCES agents(id),
    model_id TEXT NOT NULL,
    creator_org_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    payer_account_id BIGINT NOT NULL REFERENCES accounts(id),
    payer_org_id TEXT,
    free BOOLEAN NOT NULL,
    runtime_infra BIGINT NOT NULL,
    publisher_addon BIGINT NOT NULL,
    addon_forgone BIGINT NOT NULL,
    platform_share BIGINT NOT NULL,
    creator_earnings BIGINT NOT NULL,
    total BIGINT NOT NULL,
    provider_cost_micro_usd BIGINT NOT NULL,
    entry_id BIGINT NOT NULL REFERENCES journal_entries(id),
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX charges_by_time ON charges (created_at);
CREATE INDEX charges_by_creator ON charges (creator_org_id);

-- Creator earnings waiting for the hold to pass; settled exactly once.
CREATE TABLE earnings_accruals (
    id INTEGER PRIMARY KEY,
    org_id TEXT NOT NULL,
    charge_id TEXT NOT NULL REFERENCES charges(id),
    amount BIGINT NOT NULL CHECK (amount > 0),
    available_at TIMESTAMP NOT NULL,
    -- Set when a settlement claims the accrual (the guard against settling twice).
    settled_at TIMESTAMP,
    settled_entry_id BIGINT REFERENCES journal_entries(id),
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX earnings_accruals_unsettled ON earnings_accruals (available_at) WHERE settled_at IS NULL;
CREATE INDEX earnings_accruals_by_org ON earnings_accruals (org_id, available_at) WHERE settled_at IS NULL;
