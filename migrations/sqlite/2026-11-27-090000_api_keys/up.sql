-- API keys: secrets a person creates for server-to-server and SDK calls,
-- each bound to a wallet (the person's, or an organization's), with an
-- optional daily spend limit and expiry. Only the SHA-256 of the secret is
-- kept (hex; looked up through its unique index) and a short prefix to
-- show.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    name TEXT NOT NULL,
    user_id TEXT NOT NULL,
    org_id TEXT REFERENCES orgs(id),
    wallet_account_id BIGINT NOT NULL REFERENCES accounts(id),
    daily_limit BIGINT CHECK (daily_limit IS NULL OR daily_limit >= 0),
    expires_at TIMESTAMP,
    last_used_at TIMESTAMP,
    revoked_at TIMESTAMP,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX api_keys_by_user ON api_keys (user_id, created_at, id);
CREATE INDEX api_keys_by_org ON api_keys (org_id, created_at, id);

-- What a key spent per UTC day (one guarded upsert per charge or hold).
CREATE TABLE api_key_spend (
    key_id TEXT NOT NULL REFERENCES api_keys(id),
    period TEXT NOT NULL,
    spent BIGINT NOT NULL,
    PRIMARY KEY (key_id, period)
);

-- The holds made with a key: what they counted against the key's day, so
-- that a release, an expiry or a capture gives it back or adds to it.
CREATE TABLE api_key_holds (
    hold_id TEXT PRIMARY KEY REFERENCES holds(id),
    key_id TEXT NOT NULL REFERENCES api_keys(id),
    period TEXT NOT NULL,
    amount BIGINT NOT NULL CHECK (amount >= 0)
);
