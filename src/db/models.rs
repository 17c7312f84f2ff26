//! Row structs (`*Row` read, `New*` inserted) beside their tables.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::*;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = people)]
pub struct PersonRow {
    pub id: String,
    pub created_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = orgs)]
pub struct OrgRow {
    pub id: String,
    pub name: String,
    pub created_by: String,
    pub created_at: NaiveDateTime,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = orgs)]
pub struct NewOrg<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub created_by: &'a str,
    pub created_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = org_members)]
pub struct MemberRow {
    pub org_id: String,
    pub user_id: String,
    pub role: String,
    pub daily_limit: Option<i64>,
    pub created_at: NaiveDateTime,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = org_members)]
pub struct NewMember<'a> {
    pub org_id: &'a str,
    pub user_id: &'a str,
    pub role: &'a str,
    pub daily_limit: Option<i64>,
    pub created_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = accounts)]
pub struct AccountRow {
    pub id: i64,
    pub kind: String,
    pub owner_type: String,
    pub owner_id: String,
    pub public_id: Option<String>,
    pub balance: Option<i64>,
    pub frozen: bool,
    pub daily_limit: Option<i64>,
    pub weekly_limit: Option<i64>,
    pub created_at: NaiveDateTime,
}

/// `None` fields are written as NULL, never as `DEFAULT`, so the statement
/// text is fixed and diesel keeps it prepared.
#[derive(Debug, Insertable)]
#[diesel(table_name = accounts, treat_none_as_default_value = false)]
pub struct NewAccount<'a> {
    pub kind: &'a str,
    pub owner_type: &'a str,
    pub owner_id: &'a str,
    pub public_id: Option<&'a str>,
    pub balance: Option<i64>,
    pub frozen: bool,
    pub created_at: NaiveDateTime,
}

/// `None` fields are written as NULL, never as `DEFAULT`, so the statement
/// text is fixed and diesel keeps it prepared.
#[derive(Debug, Insertable)]
#[diesel(table_name = journal_entries, treat_none_as_default_value = false)]
pub struct NewEntryRow<'a> {
    pub kind: &'a str,
    pub reverses_entry_id: Option<i64>,
    pub request_key: Option<&'a str>,
    pub actor: Option<&'a str>,
    pub memo: Option<&'a str>,
    pub metadata: &'a str,
    pub created_at: NaiveDateTime,
}

/// A posting with its entry, as a wallet's history shows it.
#[derive(Debug, Clone, Queryable)]
pub struct HistoryRow {
    pub posting_id: i64,
    pub account_id: i64,
    pub amount: i64,
    pub balance_after: Option<i64>,
    pub created_at: NaiveDateTime,
    pub entry_id: i64,
    pub kind: String,
    pub reverses_entry_id: Option<i64>,
    pub actor: Option<String>,
    pub memo: Option<String>,
    pub metadata: String,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = idempotency_keys)]
pub struct IdempotencyRow {
    pub scope: String,
    pub key: String,
    pub request_hash: String,
    pub state: String,
    pub lease_token: String,
    pub locked_until: NaiveDateTime,
    pub response_status: Option<i32>,
    pub response_body: Option<String>,
    pub response_headers: Option<String>,
    pub created_at: NaiveDateTime,
}

/// Written with every column explicit (no `DEFAULT`), so diesel keeps the
/// statement prepared.
#[derive(Debug, Insertable)]
#[diesel(table_name = idempotency_keys, treat_none_as_default_value = false)]
pub struct NewIdempotencyClaim<'a> {
    pub scope: &'a str,
    pub key: &'a str,
    pub request_hash: &'a str,
    pub state: &'a str,
    pub lease_token: &'a str,
    pub locked_until: NaiveDateTime,
    pub created_at: NaiveDateTime,
}
