DROP TABLE idempotency_keys;
DROP TABLE postings;
DROP TABLE journal_entries;
DROP TABLE accounts;
DROP TABLE org_members;
DROP TABLE orgs;
DROP TABLE people;
