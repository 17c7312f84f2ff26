-- Outbound events (a transactional outbox) and the webhook endpoints they
-- are delivered to. An event row is written in the same transaction as the
-- change it reports, and so are its deliveries (one per matching endpoint):
-- nothing is announced that did not commit, nothing committed goes
-- unannounced.

-- A wallet's low-balance alert: the threshold (micro-credits, NULL = none)
-- and whether the balance is below it now (so wallet.low_balance is emitted
-- once per crossing); when wallet.depleted was last emitted (at most once an
-- hour).
ALTER TABLE accounts ADD COLUMN low_balance_threshold BIGINT;
ALTER TABLE accounts ADD COLUMN low_balance_below BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE accounts ADD COLUMN depleted_event_at TIMESTAMP;
-- When grant.expiring was emitted for a grant (once per grant).
ALTER TABLE credit_grants ADD COLUMN expiring_event_at TIMESTAMP;

CREATE TABLE events (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    -- Whose it is: `person`, `org` or `platform` (webhook_endpoint.disabled
    -- of an operator's endpoint).
    subject_type TEXT NOT NULL CHECK (subject_type IN ('person', 'org', 'platform')),
    subject_id TEXT NOT NULL,
    -- The `wal_` id of the wallet it concerns, if any.
    wallet_id TEXT,
    -- The object as the API shows it (JSON).
    data TEXT NOT NULL
);
CREATE INDEX events_by_time ON events (created_at, id);
CREATE INDEX events_by_subject ON events (subject_type, subject_id, created_at, id);

CREATE TABLE webhook_endpoints (
    id TEXT PRIMARY KEY,
    owner_type TEXT NOT NULL CHECK (owner_type IN ('person', 'org', 'platform')),
    owner_id TEXT NOT NULL,
    url TEXT NOT NULL,
    description TEXT,
    secret TEXT NOT NULL,
    -- The secret before the last rotation, which still signs until then.
    previous_secret TEXT,
    previous_secret_expires_at TIMESTAMP,
    disabled BOOLEAN NOT NULL DEFAULT FALSE,
    -- `owner` (PATCH) or `failing` (failed for 3 days in a row).
    disabled_reason TEXT,
    -- The first failed attempt since the last success (NULL: none).
    failing_since TIMESTAMP,
    created_by TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
CREATE INDEX webhook_endpoints_by_owner ON webhook_endpoints (owner_type, owner_id, created_at, id);

-- The event types an endpoint listens to (`*`: all).
CREATE TABLE webhook_endpoint_events (
    endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    event_type TEXT NOT NULL,
    PRIMARY KEY (endpoint_id, event_type)
);

-- One per (event, endpoint): the attempts so far of the current schedule,
-- when the next one is due, and the lease of the instance sending it.
CREATE TABLE webhook_deliveries (
    event_id TEXT NOT NULL REFERENCES events(id),
    endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    status TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMP,
    leased_until TIMESTAMP,
    lease_token TEXT,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    PRIMARY KEY (event_id, endpoint_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, created_at, event_id);

-- Every attempt made, for the delivery log.
CREATE TABLE webhook_attempts (
    id BIGSERIAL PRIMARY KEY,
    event_id TEXT NOT NULL,
    endpoint_id TEXT NOT NULL,
    attempted_at TIMESTAMP NOT NULL,
    -- The receiver's HTTP status (NULL: no answer, see error).
    status_code INTEGER,
    duration_ms BIGINT NOT NULL,
    error TEXT,
    -- When the next attempt is due (NULL: none, it succeeded or gave up).
    next_attempt_at TIMESTAMP,
    FOREIGN KEY (event_id, endpoint_id) REFERENCES webhook_deliveries(event_id, endpoint_id) ON DELETE CASCADE
);
CREATE INDEX webhook_attempts_by_delivery ON webhook_attempts (event_id, endpoint_id, id);
