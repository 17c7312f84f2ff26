//! Organizations, their members and roles, and their wallets.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use utoipa::ToSchema;

use super::people::insert_person_if_missing;
use super::wallets::check_limit;
use super::{Caller, Ctx, ErrorCode, ServiceError, ServiceResult};
use crate::db::models::{MemberChanges, MemberRow, NewMember, NewOrg, OrgRow};
use crate::db::schema::{org_members, orgs};
use crate::db::{self, DbConn, WriteTx};
use crate::domain::ids::new_id;
use crate::domain::metadata::Metadata;
use crate::domain::text::{checked_id, checked_text};
use crate::domain::{AccountKind, Credits, OrgRole, OwnerType};
use crate::ledger;

/// An organization.
#[derive(Debug, Serialize, ToSchema)]
pub struct Org {
    pub id: String,
    pub name: String,
    /// The organization's wallet.
    pub wallet_id: String,
    /// The plan in force (`free` or `pro`).
    pub plan: String,
    /// The caller's role in it.
    #[schema(value_type = super::names::Role)]
    pub role: String,
    pub created_at: DateTime<Utc>,
    /// Your pairs given when it was made (e.g. its id in your systems);
    /// `{}` for none.
    pub metadata: Metadata,
}

/// A member of an organization.
#[derive(Debug, Serialize, ToSchema)]
pub struct Member {
    /// The person's id (their JWT `sub`).
    pub user_id: String,
    /// `owner`, `admin` or `member`.
    #[schema(value_type = super::names::Role)]
    pub role: String,
    /// Most credits this member may spend from the org wallet per UTC day; null = no limit.
    #[schema(value_type = Option<String>, example = "25")]
    pub daily_limit: Option<Credits>,
    pub created_at: DateTime<Utc>,
}

/// A list of members.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberList {
    pub data: Vec<Member>,
    pub has_more: bool,
}

/// A change to a member; absent fields stay as they are.
#[derive(Debug, Default)]
pub struct MemberPatch {
    pub role: Option<OrgRole>,
    /// `Some(None)` removes the limit.
    pub daily_limit: Option<Option<Credits>>,
}

/// The caller's role in the organization; `NotFound` if not a member (the
/// organization's existence is not revealed).
pub fn role_in(conn: &mut DbConn, org_id: &str, user_id: &str) -> ServiceResult<OrgRole> {
    let role: Option<String> =
        org_members::table.find((org_id, user_id)).select(org_members::role).first(conn).optional()?;
    role.and_then(|r| r.parse().ok()).ok_or(ServiceError::NotFound("organization"))
}

/// Like [`role_in`], and refuses a plain member.
pub fn require_admin(conn: &mut DbConn, org_id: &str, user_id: &str) -> ServiceResult<OrgRole> {
    let role = role_in(conn, org_id, user_id)?;
    if !role.can_manage() {
        return Err(ServiceError::Forbidden("only an owner or admin of the organization may do this".into()));
    }
    Ok(role)
}

fn org_view(conn: &mut DbConn, ctx: &Ctx, row: OrgRow, role: OrgRole) -> ServiceResult<Org> {
    let wallet_id = db::accounts::account_of(conn, OwnerType::Org, &row.id, AccountKind::Wallet)?
        .ok_or(ServiceError::NotFound("organization wallet"))?
        .public_id;
    let plan = super::plans::plan_of(conn, ctx, &super::plans::Subject::Org(row.id.clone()))?;
    let metadata = db::metadata::of(conn, &row.id)?;
    Ok(Org {
        metadata,
        id: row.id,
        name: row.name,
        wallet_id: wallet_id.unwrap_or_default(),
        plan,
        role: role.as_str().into(),
        created_at: row.created_at.and_utc(),
    })
}

pub fn validate_name(name: &str) -> ServiceResult<&str> {
    checked_text("name", name, 200, false).map_err(ServiceError::Validation)
}

/// `POST /v1/orgs`: the caller becomes its owner; its wallet is created with it.
pub fn create_org(
    conn: &mut DbConn,
    ctx: &Ctx,
    caller: &Caller,
    name: &str,
    metadata: &Metadata,
) -> ServiceResult<Org> {
    let name = validate_name(name)?;
    let org_id = new_id("org");
    let row = db::write_tx(conn, |tx| -> ServiceResult<OrgRow> {
        insert_person_if_missing(tx, &caller.id)?;
        let now = db::now();
        diesel::insert_into(orgs::table)
            .values(NewOrg { id: &org_id, name, created_by: &caller.id, created_at: now })
            .execute(tx.conn())?;
        diesel::insert_into(org_members::table)
            .values(NewMember {
                org_id: &org_id,
                user_id: &caller.id,
                role: OrgRole::Owner,
                daily_limit: None,
                created_at: now,
            })
            .execute(tx.conn())?;
        let wallet_id = new_id("wal");
        ledger::ensure_account(tx, OwnerType::Org, &org_id, AccountKind::Wallet, Some(&wallet_id))?;
        db::metadata::insert(tx, &org_id, metadata)?;
        Ok(orgs::table.find(&org_id).select(OrgRow::as_select()).first(tx.conn())?)
    })?;
    org_view(conn, ctx, row, OrgRole::Owner)
}

/// `GET /v1/orgs/{id}`: members only.
pub fn get_org(conn: &mut DbConn, ctx: &Ctx, caller: &Caller, org_id: &str) -> ServiceResult<Org> {
    let role = role_in(conn, org_id, &caller.id)?;
    let row = orgs::table.find(org_id).select(OrgRow::as_select()).first(conn)?;
    org_view(conn, ctx, row, role)
}

fn member_view(row: MemberRow) -> Member {
    Member {
        user_id: row.user_id,
        role: row.role.as_str().to_string(),
        daily_limit: row.daily_limit,
        created_at: row.created_at.and_utc(),
    }
}

/// `GET /v1/orgs/{id}/members`: members only; every member (organizations are small).
pub fn list_members(conn: &mut DbConn, caller: &Caller, org_id: &str) -> ServiceResult<MemberList> {
    role_in(conn, org_id, &caller.id)?;
    let rows = org_members::table
        .filter(org_members::org_id.eq(org_id))
        .order((org_members::created_at.asc(), org_members::user_id.asc()))
        .select(MemberRow::as_select())
        .load(conn)?;
    Ok(MemberList { data: rows.into_iter().map(member_view).collect(), has_more: false })
}

/// Only an owner may make or unmake owners.
fn check_role_change(actor: OrgRole, from: Option<OrgRole>, to: OrgRole) -> ServiceResult<()> {
    let touches_owner = to == OrgRole::Owner || from == Some(OrgRole::Owner);
    if touches_owner && actor != OrgRole::Owner {
        return Err(ServiceError::Forbidden("only an owner may grant or change the owner role".into()));
    }
    Ok(())
}

fn check_user_id(user_id: &str) -> ServiceResult<()> {
    checked_id("user_id", user_id).map(|_| ()).map_err(ServiceError::Validation)
}

/// `POST /v1/orgs/{id}/members`: org admins; the person need not have signed in yet.
pub fn add_member(
    conn: &mut DbConn,
    caller: &Caller,
    org_id: &str,
    user_id: &str,
    role: OrgRole,
    daily_limit: Option<Credits>,
) -> ServiceResult<Member> {
    check_user_id(user_id)?;
    let limit = check_limit("daily_limit", daily_limit)?;
    db::write_tx(conn, |tx| {
        db::locks::lock_org(tx, org_id)?;
        let actor = require_admin(tx, org_id, &caller.id)?;
        check_role_change(actor, None, role)?;
        insert_person_if_missing(tx, user_id)?;
        let exists = org_members::table.find((org_id, user_id)).count().get_result::<i64>(tx.conn())?;
        if exists > 0 {
            return Err(ServiceError::Conflict {
                kind: ErrorCode::AlreadyMember,
                message: format!("{user_id} is already a member"),
            });
        }
        diesel::insert_into(org_members::table)
            .values(NewMember { org_id, user_id, role, daily_limit: limit, created_at: db::now() })
            .execute(tx.conn())?;
        let row =
            org_members::table.find((org_id, user_id)).select(MemberRow::as_select()).first(tx.conn())?;
        Ok(member_view(row))
    })
}

/// The org's owners. Callers that act on the count hold the org's lock
/// ([`db::locks::lock_org`], taken first in their transaction): without it,
/// two owners demoting or removing each other at once on PostgreSQL each
/// count two owners, and the org is left with none.
fn owner_count(tx: &mut WriteTx<'_>, org_id: &str) -> QueryResult<i64> {
    org_members::table
        .filter(org_members::org_id.eq(org_id))
        .filter(org_members::role.eq(OrgRole::Owner.as_str()))
        .count()
        .get_result(tx.conn())
}

/// `PATCH /v1/orgs/{id}/members/{user_id}`: org admins.
pub fn update_member(
    conn: &mut DbConn,
    caller: &Caller,
    org_id: &str,
    user_id: &str,
    patch: MemberPatch,
) -> ServiceResult<Member> {
    let limit = patch.daily_limit.map(|l| check_limit("daily_limit", l)).transpose()?;
    db::write_tx(conn, |tx| {
        db::locks::lock_org(tx, org_id)?;
        let actor = require_admin(tx, org_id, &caller.id)?;
        let current = role_in(tx, org_id, user_id).map_err(|_| ServiceError::NotFound("member"))?;
        let role = patch.role.filter(|role| *role != current);
        if let Some(role) = role {
            check_role_change(actor, Some(current), role)?;
            if current == OrgRole::Owner && owner_count(tx, org_id)? <= 1 {
                return Err(ServiceError::Conflict {
                    kind: ErrorCode::LastOwner,
                    message: "an organization needs at least one owner".into(),
                });
            }
        }
        if role.is_some() || limit.is_some() {
            diesel::update(org_members::table.find((org_id, user_id)))
                .set(MemberChanges { role, daily_limit: limit })
                .execute(tx.conn())?;
        }
        let row =
            org_members::table.find((org_id, user_id)).select(MemberRow::as_select()).first(tx.conn())?;
        Ok(member_view(row))
    })
}

/// `DELETE /v1/orgs/{id}/members/{user_id}`: org admins; never the last owner.
pub fn remove_member(conn: &mut DbConn, caller: &Caller, org_id: &str, user_id: &str) -> ServiceResult<()> {
    db::write_tx(conn, |tx| {
        db::locks::lock_org(tx, org_id)?;
        let actor = require_admin(tx, org_id, &caller.id)?;
        let current = role_in(tx, org_id, user_id).map_err(|_| ServiceError::NotFound("member"))?;
        if current == OrgRole::Owner {
            check_role_change(actor, Some(current), OrgRole::Member)?;
            if owner_count(tx, org_id)? <= 1 {
                return Err(ServiceError::Conflict {
                    kind: ErrorCode::LastOwner,
                    message: "an organization needs at least one owner".into(),
                });
            }
        }
        diesel::delete(org_members::table.find((org_id, user_id))).execute(tx.conn())?;
        Ok(())
    })
}
