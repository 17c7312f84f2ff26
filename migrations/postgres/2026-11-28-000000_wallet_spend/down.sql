-- Back to wallet rows in spend_counters (user_id = '').
INSERT INTO spend_counters (account_id, user_id, period, spent)
    SELECT id, '', spent_day_key, spent_day FROM accounts WHERE spent_day_key IS NOT NULL;
INSERT INTO spend_counters (account_id, user_id, period, spent)
    SELECT id, '', spent_week_key, spent_week FROM accounts WHERE spent_week_key IS NOT NULL;
ALTER TABLE accounts DROP COLUMN spent_week;
ALTER TABLE accounts DROP COLUMN spent_week_key;
ALTER TABLE accounts DROP COLUMN spent_day;
ALTER TABLE accounts DROP COLUMN spent_day_key;
