-- A failed bank payout of a connected account no longer returns earnings:
-- it flags the payouts that bank payout carried and the organization's
-- payout account. A payout keeps the payment its transfer made on the
-- connected account (`destination_payment`, `py_...`), through which a
-- bank payout's balance transactions name the transfers it carried.
ALTER TABLE payouts ADD COLUMN destination_payment TEXT;
ALTER TABLE payouts ADD COLUMN bank_failed_at TIMESTAMP;
ALTER TABLE payouts ADD COLUMN bank_failure_code TEXT;
ALTER TABLE payouts ADD COLUMN bank_failure_message TEXT;
CREATE INDEX payouts_by_destination_payment ON payouts (destination_payment);
CREATE INDEX payouts_by_stripe_payout ON payouts (stripe_payout_id);
ALTER TABLE payout_accounts ADD COLUMN bank_payout_failed_at TIMESTAMP;
ALTER TABLE payout_accounts ADD COLUMN bank_payout_failure_code TEXT;
ALTER TABLE payout_accounts ADD COLUMN bank_payout_failure_message TEXT;
ALTER TABLE payout_accounts ADD COLUMN failed_bank_payout_id TEXT;
