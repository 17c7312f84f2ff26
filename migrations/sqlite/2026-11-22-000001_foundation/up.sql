-- People, organizations, the double-entry ledger and idempotency records.
CREATE TABLE people (
    id TEXT PRIMARY KEY,
    created_at TIMESTAMP NOT NULL
);

CREATE TABLE orgs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_by TEXT NOT NULL REFERENCES people(id),
    created_at TIMESTAMP NOT NULL
);

CREATE TABLE org_members (
    org_id TEXT NOT NULL REFERENCES orgs(id),
    user_id TEXT NOT NULL REFERENCES people(id),
    role TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    daily_limit BIGINT CHECK (daily_limit IS NULL OR daily_limit >= 0),
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (org_id, user_id)
);
CREATE INDEX org_members_by_user ON org_members (user_id);

-- balance is a cached sum of postings, kept only where a movement must check
-- it (wallets, available and in-payout earnings); NULL means "derived".
CREATE TABLE accounts (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    owner_type TEXT NOT NULL CHECK (owner_type IN ('person', 'org', 'platform')),
    owner_id TEXT NOT NULL,
    public_id TEXT UNIQUE,
    balance BIGINT,
    frozen BOOLEAN NOT NULL DEFAULT FALSE,
    daily_limit BIGINT CHECK (daily_limit IS NULL OR daily_limit >= 0),
    weekly_limit BIGINT CHECK (weekly_limit IS NULL OR weekly_limit >= 0),
    created_at TIMESTAMP NOT NULL,
    UNIQUE (owner_type, owner_id, kind)
);

CREATE TABLE journal_entries (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    reverses_entry_id BIGINT REFERENCES journal_entries(id),
    request_key TEXT UNIQUE,
    actor TEXT,
    memo TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    created_at TIMESTAMP NOT NULL
);

CREATE TABLE postings (
    id INTEGER PRIMARY KEY,
    entry_id BIGINT NOT NULL REFERENCES journal_entries(id),
    account_id BIGINT NOT NULL REFERENCES accounts(id),
    amount BIGINT NOT NULL,
    balance_after BIGINT,
    created_at TIMESTAMP NOT NULL,
    UNIQUE (entry_id, account_id)
);
CREATE INDEX postings_by_account ON postings (account_id, id);

-- The ledger is append-only: a mistake is corrected by a reversing entry.
CREATE TRIGGER journal_entries_no_update BEFORE UPDATE ON journal_entries
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only: UPDATE on journal_entries refused'); END;
CREATE TRIGGER journal_entries_no_delete BEFORE DELETE ON journal_entries
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only: DELETE on journal_entries refused'); END;
CREATE TRIGGER postings_no_update BEFORE UPDATE ON postings
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only: UPDATE on postings refused'); END;
CREATE TRIGGER postings_no_delete BEFORE DELETE ON postings
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only: DELETE on postings refused'); END;

CREATE TABLE idempotency_keys (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('in_flight', 'done')),
    lease_token TEXT NOT NULL,
    locked_until TIMESTAMP NOT NULL,
    response_status INTEGER,
    response_body TEXT,
    response_headers TEXT,
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
