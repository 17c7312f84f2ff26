DROP TABLE subscriptions;
DROP TABLE plan_grants;
