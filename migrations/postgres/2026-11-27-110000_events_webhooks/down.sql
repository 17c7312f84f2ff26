DROP TABLE webhook_attempts;
DROP TABLE webhook_deliveries;
DROP TABLE webhook_endpoint_events;
DROP TABLE webhook_endpoints;
DROP TABLE events;
ALTER TABLE credit_grants DROP COLUMN expiring_event_at;
ALTER TABLE accounts DROP COLUMN depleted_event_at;
ALTER TABLE accounts DROP COLUMN low_balance_below;
ALTER TABLE accounts DROP COLUMN low_balance_threshold;
