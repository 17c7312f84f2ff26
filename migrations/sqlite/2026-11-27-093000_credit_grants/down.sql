ALTER TABLE top_ups DROP COLUMN validity;
DROP TABLE grant_draws;
DROP TABLE credit_grants;
