DROP TABLE object_metadata;
