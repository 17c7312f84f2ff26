-- The subscription-mode Checkouts tally opened, so that an abandoned one
-- ends `expired` (and a paid one `complete`) as top-up Checkouts do.
CREATE TABLE subscription_checkouts (
    id TEXT PRIMARY KEY,
    subject_type TEXT NOT NULL CHECK (subject_type IN ('person', 'org')),
    subject_id TEXT NOT NULL,
    plan TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'complete', 'expired')),
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
CREATE INDEX subscription_checkouts_by_subject ON subscription_checkouts (subject_type, subject_id);
