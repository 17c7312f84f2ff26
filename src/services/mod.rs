//! One module per capability. A service opens the transaction, decides, and
//! calls `ledger` and `domain`; it returns the view the API shows.

pub mod adjustments;
pub mod agents;
pub mod api_keys;
pub mod auto_top_up;
pub mod billing_profiles;
pub mod charge_refunds;
pub mod charge_views;
pub mod charges;
pub mod earnings;
mod error;
pub mod events;
pub mod grants;
pub mod history;
pub mod holds;
pub mod idempotency;
pub mod invoice_pdf;
pub mod invoices;
pub mod models;
pub mod names;
pub mod orgs;
pub mod payouts;
pub mod people;
pub mod plans;
pub mod reports;
pub mod self_service;
pub mod stripe_events;
pub mod tools;
pub mod topups;
pub mod usage;
pub mod wallets;
pub mod webhook_deliveries;
pub mod webhook_endpoints;

use std::sync::Arc;

pub use error::{ErrorCode, ServiceError, ServiceResult};

use crate::config::Settings;
use crate::ledger::PlatformAccounts;

/// What every service may need besides a connection.
#[derive(Clone)]
pub struct Ctx {
    pub settings: Arc<Settings>,
    pub platform: PlatformAccounts,
}

/// The authenticated caller, as services see it.
#[derive(Clone, Debug)]
pub struct Caller {
    pub id: String,
    pub operator: bool,
    pub service: bool,
}
