//! tally: the money side of an AI-agent marketplace. Prepaid credit wallets,
//! per-message charges, creator earnings and payouts, on a double-entry ledger.

pub mod api;
pub mod auth;
#[cfg(feature = "bench")]
pub mod bench;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod flows;
pub mod ledger;
pub mod metrics;
pub mod services;
pub mod startup;
pub mod stripe;
pub mod telemetry;
