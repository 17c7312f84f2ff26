DROP TABLE subscription_checkouts;
