//! The integration suite: every test runs against the real server, on
//! SQLite always and on PostgreSQL when `TEST_POSTGRES_URL` is set.

mod helpers;

mod api_keys;
mod auth;
mod auto_top_up;
mod charge_refunds;
mod charge_views;
mod charges;
mod cli;
mod cors;
mod events;
mod exports;
mod gate;
mod grants;
mod group_commit;
mod holds;
mod idempotency;
mod input;
mod invoices;
mod jwks;
mod ledger;
mod metadata;
mod metered;
mod metrics;
mod migrations;
mod openapi;
mod orgs;
mod overflow;
mod payouts;
mod plans;
mod replica;
mod resilience;
mod self_service;
mod self_service_stripe;
mod topups;
mod usage;
mod wallets;
mod webhook_endpoints;
mod webhooks;
