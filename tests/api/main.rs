//! The integration suite: every test runs against the real server, on
//! SQLite always and on PostgreSQL when `TEST_POSTGRES_URL` is set.

mod helpers;

mod api_keys;
mod auth;
mod charge_refunds;
mod charge_views;
mod charges;
mod cli;
mod cors;
mod events;
mod exports;
mod gate;
mod grants;
mod holds;
mod idempotency;
mod input;
mod invoices;
mod jwks;
mod ledger;
mod metered;
mod metrics;
mod migrations;
mod openapi;
mod orgs;
mod overflow;
mod payouts;
mod plans;
mod resilience;
mod self_service;
mod topups;
mod wallets;
mod webhook_endpoints;
mod webhooks;
