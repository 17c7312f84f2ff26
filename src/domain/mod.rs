//! Pure rules: money, identifiers, account and entry kinds, balanced entries,
//! roles. No database and no HTTP here, so everything is unit-tested.

pub mod entry;
pub mod ids;
pub mod kinds;
pub mod limits;
pub mod metadata;
pub mod money;
pub mod plans;
pub mod pricing;
pub mod statuses;
pub mod tax;
pub mod text;
pub mod usage;
pub mod webhook_url;

pub use entry::{EntryError, Leg};
pub use kinds::{AccountKind, EntryKind, HoldStatus, OrgRole, OwnerType, Visibility};
pub use money::{AmountError, CreditRate, CreditTotal, Credits, UsdCents};
pub use statuses::{
    AutoTopUpStatus, CheckoutStatus, FreezeAction, GrantCategory, GrantSource, PayoutStatus,
    SubscriptionStatus, TopUpMethod, TopUpStatus, Validity,
};
