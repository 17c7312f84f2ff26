//! Finding an owner's account: the one query every capability needs.

use diesel::prelude::*;

use super::models::AccountRow;
use super::schema::accounts;
use super::DbConn;
use crate::domain::{AccountKind, OwnerType};

/// The account of `owner` (`owner_type`, `owner_id`) of `kind`, if it exists
/// (unique by constraint).
pub fn account_of(
    conn: &mut DbConn,
    owner_type: OwnerType,
    owner_id: &str,
    kind: AccountKind,
) -> QueryResult<Option<AccountRow>> {
    accounts::table
        .filter(accounts::owner_type.eq(owner_type.as_str()))
        .filter(accounts::owner_id.eq(owner_id))
        .filter(accounts::kind.eq(kind.as_str()))
        .select(AccountRow::as_select())
        .first(conn)
        .optional()
}
