//! The closed sets of names that views carry as text, as the OpenAPI
//! document shows them: named enums, so that generated clients get a type
//! (a union in TypeScript, an enum in Python) instead of a bare string.
//! The views keep the stored text; tests/api/openapi.rs checks these lists
//! against the database's CHECK constraints. (A transaction's `type` is
//! `domain::EntryKind` itself.)

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::OrgRole;
pub use crate::domain::{PayoutStatus, TopUpStatus};

/// A role in an organization.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    Member,
}

impl From<Role> for OrgRole {
    fn from(r: Role) -> Self {
        match r {
            Role::Owner => OrgRole::Owner,
            Role::Admin => OrgRole::Admin,
            Role::Member => OrgRole::Member,
        }
    }
}

/// Who owns a wallet.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WalletOwner {
    Person,
    Org,
}
