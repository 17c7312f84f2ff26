-- Billing profiles, invoices and credit notes. A billing profile is what a
-- person or an organization wants on its invoices (a JSON document, checked
-- by the API). Every paid top-up gets one invoice, issued in the
-- transaction that credits it and never changed afterwards: its number is
-- the top-up's gap-free receipt number, the buyer is a copy of the billing
-- profile at that moment. A refund issues a credit note, numbered in its own
-- gap-free sequence.
CREATE TABLE billing_profiles (
    owner_type TEXT NOT NULL CHECK (owner_type IN ('person', 'org')),
    owner_id TEXT NOT NULL,
    profile TEXT NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    PRIMARY KEY (owner_type, owner_id)
);

-- The tax rate of the configured rate table that applies to a top-up (by
-- the buyer's country when the order is made); NULL when none applies.
ALTER TABLE top_ups ADD COLUMN tax_rate TEXT;

CREATE TABLE invoices (
    id TEXT PRIMARY KEY,
    number TEXT NOT NULL UNIQUE,
    sequence BIGINT NOT NULL UNIQUE,
    top_up_id TEXT NOT NULL UNIQUE REFERENCES top_ups(id),
    wallet_account_id BIGINT NOT NULL REFERENCES accounts(id),
    wallet_id TEXT NOT NULL,
    issued_at TIMESTAMP NOT NULL,
    seller TEXT NOT NULL,
    buyer TEXT,
    line TEXT NOT NULL,
    currency TEXT NOT NULL,
    subtotal_cents BIGINT NOT NULL CHECK (subtotal_cents >= 0),
    tax_cents BIGINT NOT NULL CHECK (tax_cents >= 0),
    total_cents BIGINT NOT NULL CHECK (total_cents = subtotal_cents + tax_cents),
    -- `stripe` (Stripe Tax on the Checkout Session), `rate_table` or `none`.
    tax_source TEXT NOT NULL,
    -- The rate applied from the table, as a decimal string ("0.19").
    tax_rate TEXT,
    tax_inclusive BOOLEAN NOT NULL,
    payment_method TEXT NOT NULL
);
CREATE INDEX invoices_by_wallet ON invoices (wallet_account_id, issued_at, id);

CREATE TABLE credit_note_counter (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_number BIGINT NOT NULL
);
INSERT INTO credit_note_counter (id, last_number) VALUES (1, 0);

CREATE TABLE credit_notes (
    id TEXT PRIMARY KEY,
    number TEXT NOT NULL UNIQUE,
    sequence BIGINT NOT NULL UNIQUE,
    invoice_id TEXT NOT NULL REFERENCES invoices(id),
    issued_at TIMESTAMP NOT NULL,
    subtotal_cents BIGINT NOT NULL CHECK (subtotal_cents >= 0),
    tax_cents BIGINT NOT NULL CHECK (tax_cents >= 0),
    total_cents BIGINT NOT NULL CHECK (total_cents > 0 AND total_cents = subtotal_cents + tax_cents),
    reason TEXT NOT NULL
);
CREATE INDEX credit_notes_by_invoice ON credit_notes (invoice_id, sequence);
