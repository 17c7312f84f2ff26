ALTER TABLE charges DROP COLUMN generations_cost;
ALTER TABLE charges DROP COLUMN tools_cost;
ALTER TABLE charges DROP COLUMN output_tokens_cost;
ALTER TABLE charges DROP COLUMN input_tokens_cost;
ALTER TABLE charges DROP COLUMN tool_prices;
ALTER TABLE charges DROP COLUMN per_generation;
ALTER TABLE charges DROP COLUMN output_per_mtok;
ALTER TABLE charges DROP COLUMN input_per_mtok;
ALTER TABLE charges DROP COLUMN tool_calls;
ALTER TABLE charges DROP COLUMN generations;
ALTER TABLE charges DROP COLUMN output_tokens;
ALTER TABLE charges DROP COLUMN input_tokens;

DROP TABLE tools;

ALTER TABLE models DROP COLUMN per_generation;
ALTER TABLE models DROP COLUMN output_per_mtok;
ALTER TABLE models DROP COLUMN input_per_mtok;
