//! Row structs (`*Row` read, `New*` inserted) beside their tables.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::*;
use crate::domain::{
    AccountKind, Credits, EntryKind, FreezeAction, HoldStatus, OrgRole, OwnerType, Visibility,
};

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
    pub role: OrgRole,
    pub daily_limit: Option<Credits>,
    pub created_at: NaiveDateTime,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = org_members)]
pub struct NewMember<'a> {
    pub org_id: &'a str,
    pub user_id: &'a str,
    pub role: OrgRole,
    pub daily_limit: Option<Credits>,
    pub created_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = accounts)]
pub struct AccountRow {
    pub id: i64,
    pub kind: AccountKind,
    pub owner_type: OwnerType,
    pub owner_id: String,
    pub public_id: Option<String>,
    pub balance: Option<Credits>,
    pub frozen: bool,
    pub daily_limit: Option<Credits>,
    pub weekly_limit: Option<Credits>,
    pub created_at: NaiveDateTime,
    pub low_balance_threshold: Option<Credits>,
    /// The wallet's spend of the period `spent_day_key` names (a UTC day);
    /// see [`AccountRow::spent_in`].
    pub spent_day_key: Option<String>,
    pub spent_day: Credits,
    /// The same for the ISO week `spent_week_key` names.
    pub spent_week_key: Option<String>,
    pub spent_week: Credits,
}

impl AccountRow {
    /// What the wallet spent in the `period` containing `now`: its cached
    /// amount when the row's key is that period's, else nothing yet.
    pub fn spent_in(&self, period: crate::domain::limits::Period, now: NaiveDateTime) -> Credits {
        self.spent_in_period(period, &period.key(now))
    }

    /// What the wallet spent in the `period` whose key is `key`.
    pub fn spent_in_period(&self, period: crate::domain::limits::Period, key: &str) -> Credits {
        use crate::domain::limits::Period;
        let (cached, spent) = match period {
            Period::Day => (&self.spent_day_key, self.spent_day),
            Period::Week => (&self.spent_week_key, self.spent_week),
        };
        if cached.as_deref() == Some(key) {
            spent
        } else {
            Credits::ZERO
        }
    }
}

/// `None` fields are written as NULL, never as `DEFAULT`, so the statement
/// text is fixed and diesel keeps it prepared.
#[derive(Debug, Insertable)]
#[diesel(table_name = accounts, treat_none_as_default_value = false)]
pub struct NewAccount<'a> {
    pub kind: AccountKind,
    pub owner_type: OwnerType,
    pub owner_id: &'a str,
    pub public_id: Option<&'a str>,
    pub balance: Option<Credits>,
    pub frozen: bool,
    pub created_at: NaiveDateTime,
}

/// `None` fields are written as NULL, never as `DEFAULT`, so the statement
/// text is fixed and diesel keeps it prepared.
#[derive(Debug, Insertable)]
#[diesel(table_name = journal_entries, treat_none_as_default_value = false)]
pub struct NewEntryRow<'a> {
    pub kind: EntryKind,
    pub reverses_entry_id: Option<i64>,
    pub request_key: Option<&'a str>,
    pub actor: Option<&'a str>,
    pub memo: Option<&'a str>,
    pub metadata: &'a str,
    pub created_at: NaiveDateTime,
}

/// An agent (read and inserted whole).
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = agents)]
pub struct AgentRow {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub model_id: String,
    pub visibility: Visibility,
    pub publisher_addon: Credits,
    pub free_messages: i32,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// A `PATCH` of an agent: one UPDATE; `None` leaves a column as it is.
#[derive(Debug, AsChangeset)]
#[diesel(table_name = agents)]
pub struct AgentChanges {
    pub name: Option<String>,
    pub model_id: Option<String>,
    pub visibility: Option<Visibility>,
    pub publisher_addon: Option<Credits>,
    pub free_messages: Option<i32>,
    pub updated_at: NaiveDateTime,
}

/// A `PATCH` of a wallet's spend limits: one UPDATE; `None` leaves a limit
/// as it is, `Some(None)` removes it.
#[derive(Debug, AsChangeset)]
#[diesel(table_name = accounts)]
pub struct LimitChanges {
    pub daily_limit: Option<Option<Credits>>,
    pub weekly_limit: Option<Option<Credits>>,
    pub low_balance_threshold: Option<Option<Credits>>,
}

/// An operator's freeze or unfreeze of a wallet, as its audit keeps it.
#[derive(Debug, Insertable)]
#[diesel(table_name = wallet_audit)]
pub struct NewWalletAudit<'a> {
    pub account_id: i64,
    pub action: FreezeAction,
    pub reason: &'a str,
    pub actor: &'a str,
    pub created_at: NaiveDateTime,
}

/// A `PATCH` of a member: one UPDATE; `None` leaves a column as it is.
#[derive(Debug, AsChangeset)]
#[diesel(table_name = org_members)]
pub struct MemberChanges {
    pub role: Option<OrgRole>,
    pub daily_limit: Option<Option<Credits>>,
}

/// A hold (read and inserted whole).
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = holds, treat_none_as_default_value = false)]
pub struct HoldRow {
    pub id: String,
    pub agent_id: String,
    pub user_id: String,
    pub payer_account_id: i64,
    pub held_account_id: i64,
    pub payer_org_id: Option<String>,
    pub amount: Credits,
    pub free: bool,
    pub estimate: String,
    pub status: HoldStatus,
    pub expires_at: NaiveDateTime,
    pub day_key: String,
    pub week_key: String,
    pub request_key: Option<String>,
    pub charge_id: Option<String>,
    pub created_at: NaiveDateTime,
    pub finished_at: Option<NaiveDateTime>,
}

/// A posting with its entry, as a wallet's history shows it.
#[derive(Debug, Clone, Queryable)]
pub struct HistoryRow {
    pub posting_id: i64,
    pub account_id: i64,
    pub amount: Credits,
    pub balance_after: Option<Credits>,
    pub created_at: NaiveDateTime,
    pub entry_id: i64,
    pub kind: EntryKind,
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

/// A charge as recorded (every column written, so the statement text is
/// fixed and stays prepared).
#[derive(Debug, Insertable)]
#[diesel(table_name = charges, treat_none_as_default_value = false)]
pub struct NewCharge<'a> {
    pub id: &'a str,
    pub agent_id: &'a str,
    pub model_id: &'a str,
    pub creator_org_id: &'a str,
    pub user_id: &'a str,
    pub payer_account_id: i64,
    pub payer_org_id: Option<&'a str>,
    pub free: bool,
    pub runtime_infra: Credits,
    pub publisher_addon: Credits,
    pub addon_forgone: Credits,
    pub platform_share: Credits,
    pub creator_earnings: Credits,
    pub total: Credits,
    pub provider_cost_micro_usd: i64,
    pub entry_id: i64,
    pub created_at: NaiveDateTime,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub generations: Option<i64>,
    pub tool_calls: Option<&'a str>,
    pub input_per_mtok: Option<Credits>,
    pub output_per_mtok: Option<Credits>,
    pub per_generation: Option<Credits>,
    pub tool_prices: Option<&'a str>,
    pub input_tokens_cost: Option<Credits>,
    pub output_tokens_cost: Option<Credits>,
    pub tools_cost: Option<Credits>,
    pub generations_cost: Option<Credits>,
    pub hold_id: Option<&'a str>,
    pub held: Credits,
    pub uncollected: Credits,
}

/// A creator's earnings from one charge, waiting for the earnings hold.
#[derive(Debug, Insertable)]
#[diesel(table_name = earnings_accruals, treat_none_as_default_value = false)]
pub struct NewAccrual<'a> {
    pub org_id: &'a str,
    pub charge_id: &'a str,
    pub amount: Credits,
    pub available_at: NaiveDateTime,
    pub created_at: NaiveDateTime,
}
