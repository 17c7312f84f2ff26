DROP TABLE credit_notes;
DROP TABLE credit_note_counter;
DROP TABLE invoices;
ALTER TABLE top_ups DROP COLUMN tax_rate;
DROP TABLE billing_profiles;
