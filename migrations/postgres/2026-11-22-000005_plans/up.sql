-- Plans: operator grants and Stripe subscriptions of people and organizations.
CREATE TABLE plan_grants (
    id TEXT PRIMARY KEY,
    subject_type TEXT NOT NULL CHECK (subject_type IN ('person', 'org')),
    subject_id TEXT NOT NULL,
    plan TEXT NOT NULL,
    until TIMESTAMP,
    granted_by TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX plan_grants_by_subject ON plan_grants (subject_type, subject_id);

-- The last known state of each Stripe subscription; `last_event_at` orders
-- events, and an ended subscription never comes back.
CREATE TABLE subscriptions (
    id TEXT PRIMARY KEY,
    subject_type TEXT NOT NULL CHECK (subject_type IN ('person', 'org')),
    subject_id TEXT NOT NULL,
    plan TEXT NOT NULL,
    status TEXT NOT NULL,
    past_due_since TIMESTAMP,
    last_event_at BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
CREATE INDEX subscriptions_by_subject ON subscriptions (subject_type, subject_id);
