-- Credit grants: every credit that enters a wallet is a grant with a
-- category (paid or promotional), an expiry (none = lifetime) and what is
-- left of it. Debits draw from a wallet's grants in one order (promotional
-- first, then the soonest expiry, never-expiring last, then the oldest);
-- each draw and give-back is a row of grant_draws, so a grant's remaining
-- is always its amount less the sum of its draws, and a wallet's balance
-- (when not below zero) the sum of its grants' remaining.
CREATE TABLE credit_grants (
    id BIGSERIAL PRIMARY KEY,
    public_id TEXT NOT NULL UNIQUE,
    account_id BIGINT NOT NULL REFERENCES accounts(id),
    category TEXT NOT NULL CHECK (category IN ('paid', 'promotional')),
    amount BIGINT NOT NULL CHECK (amount > 0),
    remaining BIGINT NOT NULL CHECK (remaining >= 0 AND remaining <= amount),
    expires_at TIMESTAMP,
    source TEXT NOT NULL,
    source_id TEXT,
    -- The account the grant's credits came from (cash, bonus or
    -- promotional expense, adjustments); an expired promotional remainder
    -- goes back to it, a paid one to breakage revenue. NULL for the
    -- opening grants below.
    funded_by_account_id BIGINT REFERENCES accounts(id),
    entry_id BIGINT REFERENCES journal_entries(id),
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX credit_grants_live ON credit_grants (account_id) WHERE remaining > 0;
CREATE INDEX credit_grants_by_account ON credit_grants (account_id, id);
CREATE INDEX credit_grants_due ON credit_grants (expires_at) WHERE remaining > 0 AND expires_at IS NOT NULL;
CREATE INDEX credit_grants_by_source ON credit_grants (source_id) WHERE source_id IS NOT NULL;

CREATE TABLE grant_draws (
    id BIGSERIAL PRIMARY KEY,
    grant_id BIGINT NOT NULL REFERENCES credit_grants(id),
    entry_id BIGINT NOT NULL REFERENCES journal_entries(id),
    -- The hold this draw reserved for (or gave back from), if any.
    hold_id TEXT,
    -- Taken from the grant (> 0) or given back to it (< 0).
    amount BIGINT NOT NULL CHECK (amount <> 0),
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX grant_draws_by_grant ON grant_draws (grant_id);
CREATE INDEX grant_draws_by_entry ON grant_draws (entry_id);
CREATE INDEX grant_draws_by_hold ON grant_draws (hold_id) WHERE hold_id IS NOT NULL;

-- A top-up buys credits of one validity.
ALTER TABLE top_ups ADD COLUMN validity TEXT NOT NULL DEFAULT 'lifetime';

-- Wallets that hold credits today: one lifetime paid grant of their balance.
INSERT INTO credit_grants (public_id, account_id, category, amount, remaining, expires_at, source, source_id, funded_by_account_id, entry_id, created_at)
SELECT 'grt_opening_' || a.id, a.id, 'paid', a.balance, a.balance, NULL, 'opening', NULL, NULL, NULL, a.created_at
FROM accounts a WHERE a.kind = 'wallet' AND a.balance > 0;
