DROP TABLE stripe_events;
DROP TABLE receipt_counter;
DROP TABLE top_ups;
