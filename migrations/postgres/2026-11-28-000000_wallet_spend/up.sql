-- A wallet's spend of the current UTC day and ISO week, cached on its row
-- beside its balance and changed by the same guarded update as the
-- balance (the spend limits `daily_limit` and `weekly_limit` are checked
-- in it): a charge no longer writes two spend-counter rows. The key says
-- which period the amount is of ('2026-11-28', '2026-W48'); a count in a
-- later period starts the amount again. `spend_counters` keeps the org
-- members' day counters. Each wallet's latest counters are carried over.
ALTER TABLE accounts ADD COLUMN spent_day_key TEXT;
ALTER TABLE accounts ADD COLUMN spent_day BIGINT NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN spent_week_key TEXT;
ALTER TABLE accounts ADD COLUMN spent_week BIGINT NOT NULL DEFAULT 0;
UPDATE accounts SET
    spent_day_key = (SELECT MAX(s.period) FROM spend_counters s
                     WHERE s.account_id = accounts.id AND s.user_id = '' AND s.period NOT LIKE '%W%'),
    spent_week_key = (SELECT MAX(s.period) FROM spend_counters s
                      WHERE s.account_id = accounts.id AND s.user_id = '' AND s.period LIKE '%W%')
WHERE EXISTS (SELECT 1 FROM spend_counters s WHERE s.account_id = accounts.id AND s.user_id = '');
UPDATE accounts SET
    spent_day = COALESCE((SELECT s.spent FROM spend_counters s
                          WHERE s.account_id = accounts.id AND s.user_id = '' AND s.period = accounts.spent_day_key), 0),
    spent_week = COALESCE((SELECT s.spent FROM spend_counters s
                           WHERE s.account_id = accounts.id AND s.user_id = '' AND s.period = accounts.spent_week_key), 0)
WHERE spent_day_key IS NOT NULL OR spent_week_key IS NOT NULL;
DELETE FROM spend_counters WHERE user_id = '';
