DROP TABLE idempotency_keys;
DROP TABLE postings;
DROP TABLE journal_entries;
DROP FUNCTION tally_append_only();
DROP TABLE accounts;
DROP TABLE org_members;
DROP TABLE orgs;
DROP TABLE people;
