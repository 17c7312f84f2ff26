-- Metered prices: a model's token and generation rates (micro-credits per
-- million tokens, per generated asset; NULL = not metered, so a usage of it
-- is refused rather than free), the tools' price list (micro-credits per
-- call), and on each charge the usage it priced, the rates it used and its
-- price parts (all NULL on a charge without usage).
ALTER TABLE models ADD COLUMN input_per_mtok BIGINT;
ALTER TABLE models ADD COLUMN output_per_mtok BIGINT;
ALTER TABLE models ADD COLUMN per_generation BIGINT;

CREATE TABLE tools (
    id TEXT PRIMARY KEY,
    price BIGINT NOT NULL CHECK (price >= 0),
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);

ALTER TABLE charges ADD COLUMN input_tokens BIGINT;
ALTER TABLE charges ADD COLUMN output_tokens BIGINT;
ALTER TABLE charges ADD COLUMN generations BIGINT;
ALTER TABLE charges ADD COLUMN tool_calls TEXT;
ALTER TABLE charges ADD COLUMN input_per_mtok BIGINT;
ALTER TABLE charges ADD COLUMN output_per_mtok BIGINT;
ALTER TABLE charges ADD COLUMN per_generation BIGINT;
ALTER TABLE charges ADD COLUMN tool_prices TEXT;
ALTER TABLE charges ADD COLUMN input_tokens_cost BIGINT;
ALTER TABLE charges ADD COLUMN output_tokens_cost BIGINT;
ALTER TABLE charges ADD COLUMN tools_cost BIGINT;
ALTER TABLE charges ADD COLUMN generations_cost BIGINT;
