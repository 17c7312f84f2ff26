ALTER TABLE charges DROP COLUMN uncollected;
ALTER TABLE charges DROP COLUMN held;
ALTER TABLE charges DROP COLUMN hold_id;
DROP TABLE holds;
