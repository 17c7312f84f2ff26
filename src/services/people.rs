//! People: created on first use from the JWT `sub`, each with a personal wallet.

use diesel::prelude::*;
use serde::Serialize;
use utoipa::ToSchema;

use super::{Caller, ServiceResult};
use crate::db::models::AccountRow;
use crate::db::schema::{accounts, org_members, orgs, people};
use crate::db::{self, DbConn, WriteTx};
use crate::domain::ids::new_id;
use crate::domain::{AccountKind, OwnerType};
use crate::ledger;

/// The signed-in person.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    /// The person's id: the JWT `sub`.
    pub id: String,
    /// The personal wallet.
    pub wallet_id: String,
    /// The plan in force (`free` or `pro`).
    pub plan: String,
    /// Roles from the token (`admin`, `service`).
    pub roles: Vec<String>,
    /// Organizations the person belongs to.
    pub orgs: Vec<MyOrg>,
}

/// An organization the person belongs to, with their role in it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MyOrg {
    pub id: String,
    pub name: String,
    /// `owner`, `admin` or `member`.
    #[schema(value_type = super::names::Role)]
    pub role: String,
    pub wallet_id: String,
}

/// The person's personal wallet row, creating the person and the wallet on
/// first sight (in a write transaction of its own, or a savepoint of the
/// caller's).
pub fn personal_wallet(conn: &mut DbConn, person_id: &str) -> ServiceResult<AccountRow> {
    if let Some(wallet) = find_personal_wallet(conn, person_id)? {
        return Ok(wallet);
    }
    db::write_tx(conn, |tx| ensure_person(tx, person_id))
}

/// The person and their wallet, made unless they exist.
pub fn ensure_person(tx: &mut WriteTx<'_>, person_id: &str) -> ServiceResult<AccountRow> {
    if let Some(wallet) = find_personal_wallet(tx, person_id)? {
        return Ok(wallet);
    }
    insert_person_if_missing(tx, person_id)?;
    let wallet_id = new_id("wal");
    ledger::ensure_account(tx, OwnerType::Person, person_id, AccountKind::Wallet, Some(&wallet_id))?;
    find_personal_wallet(tx, person_id)?.ok_or(super::ServiceError::NotFound("wallet"))
}

/// Inserts the person row unless it exists.
pub fn insert_person_if_missing(tx: &mut WriteTx<'_>, person_id: &str) -> QueryResult<()> {
    let exists: Option<String> =
        people::table.find(person_id).select(people::id).first(tx.conn()).optional()?;
    if exists.is_some() {
        return Ok(());
    }
    let inserted = tx.savepoint(|sp| {
        diesel::insert_into(people::table)
            .values((people::id.eq(person_id), people::created_at.eq(db::now())))
            .execute(sp.conn())
    });
    match inserted {
        Ok(_) => Ok(()),
        Err(e) if db::is_unique_violation(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

fn find_personal_wallet(conn: &mut DbConn, person_id: &str) -> QueryResult<Option<AccountRow>> {
    db::accounts::account_of(conn, OwnerType::Person, person_id, AccountKind::Wallet)
}

/// `GET /v1/me`.
pub fn get_me(conn: &mut DbConn, ctx: &super::Ctx, caller: &Caller, roles: Vec<String>) -> ServiceResult<Me> {
    let wallet = personal_wallet(conn, &caller.id)?;
    let plan = super::plans::plan_of(conn, ctx, &super::plans::Subject::Person(caller.id.clone()))?;
    let rows: Vec<(String, String, String, Option<String>)> = org_members::table
        .inner_join(orgs::table)
        .inner_join(
            accounts::table.on(accounts::owner_type
                .eq(OwnerType::Org.as_str())
                .and(accounts::owner_id.eq(orgs::id))
                .and(accounts::kind.eq(AccountKind::Wallet.as_str()))),
        )
        .filter(org_members::user_id.eq(&caller.id))
        .order(orgs::created_at.asc())
        .select((orgs::id, orgs::name, org_members::role, accounts::public_id))
        .load(conn)?;
    Ok(Me {
        id: caller.id.clone(),
        wallet_id: wallet.public_id.unwrap_or_default(),
        plan,
        roles,
        orgs: rows
            .into_iter()
            .map(|(id, name, role, wallet_id)| MyOrg {
                id,
                name,
                role,
                wallet_id: wallet_id.unwrap_or_default(),
            })
            .collect(),
    })
}
