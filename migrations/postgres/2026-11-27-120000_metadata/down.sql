DROP INDEX charges_by_payer;
DROP TABLE object_metadata;
