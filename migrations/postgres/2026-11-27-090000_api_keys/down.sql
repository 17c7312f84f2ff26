DROP TABLE api_key_holds;
DROP TABLE api_key_spend;
DROP TABLE api_keys;
