DROP TABLE earnings_accruals;
DROP TABLE charges;
DROP TABLE spend_counters;
DROP TABLE free_message_usage;
DROP TABLE agents;
DROP TABLE models;
