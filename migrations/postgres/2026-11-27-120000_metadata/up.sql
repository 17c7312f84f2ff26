-- Callers' metadata on charges, holds, top-ups, organizations and agents:
-- one row per pair, keyed by the object's prefixed public id (chg_, hld_,
-- top_, org_, agt_ ids never collide). The lookup index serves listing a
-- wallet's charges by one pair; objects without metadata have no rows, so
-- a charge without it writes nothing here.
CREATE TABLE object_metadata (
    object_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (object_id, key)
);
CREATE INDEX object_metadata_lookup ON object_metadata (key, value, object_id);
