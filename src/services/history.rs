//! Transaction history of an account: newest first, keyset pagination on the
//! posting id (stable under concurrent inserts, as fast on page 10,000 as on
//! page 1), filters by type and time, and CSV export.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ServiceError, ServiceResult};
use crate::db::models::HistoryRow;
use crate::db::schema::{journal_entries, postings};
use crate::db::DbConn;
use crate::domain::ids::{entry_id, parse_transaction_id, transaction_id};
use crate::domain::{Credits, EntryKind};
use crate::ledger::AccountRef;

pub const DEFAULT_PAGE: i64 = 25;
pub const MAX_PAGE: i64 = 100;

/// What a transaction refers to; only the fields that apply are present.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct TransactionReferences {
    /// The operator or person who caused it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Why (adjustments).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub charge_id: Option<String>,
    /// Runtime infra price used, in credits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_infra: Option<String>,
    /// Publisher add-on price used, in credits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publisher_addon: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_up_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pack_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payout_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adjustment_id: Option<String>,
    /// The hold that reserved (or released) the credits, or that a charge
    /// captured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_id: Option<String>,
}

/// One movement on an account.
#[derive(Debug, Serialize, ToSchema)]
pub struct Transaction {
    /// `txn_` id; pass it as `starting_after` to get the next page.
    pub id: String,
    /// `adjustment`, `charge`, `free_message`, `top_up`, `refund`, `dispute`,
    /// `dispute_won`, `earnings_settlement`, `payout`, `payout_paid`, `payout_reversal`.
    #[serde(rename = "type")]
    #[schema(value_type = crate::domain::EntryKind)]
    pub kind: String,
    /// Signed amount in credits: negative leaves the account.
    #[schema(value_type = String, example = "-1.3")]
    pub amount: Credits,
    /// The account's balance right after this movement (null where the
    /// account keeps no running balance).
    #[schema(value_type = Option<String>, example = "48.7")]
    pub balance_after: Option<Credits>,
    pub created_at: DateTime<Utc>,
    /// The journal entry this movement belongs to (`ent_` id).
    pub entry_id: String,
    /// Which account moved, where a history spans several (earnings:
    /// `earnings_pending`, `earnings_available`, `earnings_in_payout`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The entry this one reverses, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reverses_entry_id: Option<String>,
    pub references: TransactionReferences,
}

/// A page of transactions.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransactionList {
    pub data: Vec<Transaction>,
    /// True when more transactions follow; ask with `starting_after` = the last id.
    pub has_more: bool,
}

/// Filters for a history query.
#[derive(Debug, Default, Clone)]
pub struct HistoryQuery {
    pub limit: i64,
    pub starting_after: Option<String>,
    pub types: Vec<EntryKind>,
    pub from: Option<NaiveDateTime>,
    pub to: Option<NaiveDateTime>,
}

impl HistoryQuery {
    /// Reads the comma-separated `type` filter.
    pub fn parse_types(text: &str) -> ServiceResult<Vec<EntryKind>> {
        text.split(',').map(|t| t.parse::<EntryKind>().map_err(ServiceError::Validation)).collect()
    }
}

fn to_view(row: HistoryRow, accounts: &[AccountRef]) -> Transaction {
    let mut references: TransactionReferences = serde_json::from_str(&row.metadata).unwrap_or_default();
    references.actor = references.actor.or(row.actor);
    references.reason = references.reason.or(row.memo);
    Transaction {
        id: transaction_id(row.posting_id),
        kind: row.kind.as_str().to_string(),
        amount: row.amount,
        balance_after: row.balance_after,
        created_at: row.created_at.and_utc(),
        entry_id: entry_id(row.entry_id),
        account: if accounts.len() > 1 {
            accounts.iter().find(|a| a.id == row.account_id).map(|a| a.kind.as_str().to_string())
        } else {
            None
        },
        reverses_entry_id: row.reverses_entry_id.map(entry_id),
        references,
    }
}

/// One page of an account's history, newest first.
pub fn list(conn: &mut DbConn, account: AccountRef, q: &HistoryQuery) -> ServiceResult<TransactionList> {
    list_accounts(conn, &[account], q)
}

/// One page of the merged history of several accounts, newest first.
pub fn list_accounts(
    conn: &mut DbConn,
    accounts: &[AccountRef],
    q: &HistoryQuery,
) -> ServiceResult<TransactionList> {
    if !(1..=MAX_PAGE).contains(&q.limit) {
        return Err(ServiceError::Validation(format!("limit must be 1 to {MAX_PAGE}")));
    }
    let cursor = match &q.starting_after {
        Some(cursor) => Some(parse_transaction_id(cursor).ok_or_else(|| {
            ServiceError::Validation(format!("starting_after '{cursor}' is not a transaction id"))
        })?),
        None => None,
    };
    let mut rows = if crate::db::is_sqlite(conn) {
        sqlite_page(conn, accounts, cursor, q)?
    } else {
        let ids: Vec<i64> = accounts.iter().map(|a| a.id).collect();
        let types: Vec<&str> = q.types.iter().map(|t| t.as_str()).collect();
        crate::db::history::page_per_account(conn, &ids, cursor, &types, q.from, q.to, q.limit + 1)?
    };
    let has_more = rows.len() as i64 > q.limit;
    rows.truncate(q.limit as usize);
    Ok(TransactionList { data: rows.into_iter().map(|r| to_view(r, accounts)).collect(), has_more })
}

/// Up to `limit + 1` rows of the accounts' merged history on SQLite, which
/// walks the `(account_id, id)` index for the `IN` list by itself.
fn sqlite_page(
    conn: &mut DbConn,
    accounts: &[AccountRef],
    cursor: Option<i64>,
    q: &HistoryQuery,
) -> ServiceResult<Vec<HistoryRow>> {
    let mut query = postings::table
        .inner_join(journal_entries::table)
        .filter(postings::account_id.eq_any(accounts.iter().map(|a| a.id).collect::<Vec<_>>()))
        .into_boxed();
    if let Some(id) = cursor {
        query = query.filter(postings::id.lt(id));
    }
    if !q.types.is_empty() {
        query = query.filter(journal_entries::kind.eq_any(q.types.iter().map(|t| t.as_str())));
    }
    if let Some(from) = q.from {
        query = query.filter(postings::created_at.ge(from));
    }
    if let Some(to) = q.to {
        query = query.filter(postings::created_at.lt(to));
    }
    let rows: Vec<HistoryRow> = query
        .order(postings::id.desc())
        .limit(q.limit + 1)
        .select((
            postings::id,
            postings::account_id,
            postings::amount,
            postings::balance_after,
            postings::created_at,
            journal_entries::id,
            journal_entries::kind,
            journal_entries::reverses_entry_id,
            journal_entries::actor,
            journal_entries::memo,
            journal_entries::metadata,
        ))
        .load(conn)?;
    Ok(rows)
}

/// The whole filtered history as CSV, read page by page.
pub fn export_csv(conn: &mut DbConn, account: AccountRef, q: &HistoryQuery) -> ServiceResult<String> {
    let mut out = csv::Writer::from_writer(Vec::new());
    let csv_err = |e: csv::Error| ServiceError::Internal(format!("csv: {e}"));
    out.write_record([
        "id",
        "type",
        "amount",
        "balance_after",
        "created_at",
        "entry_id",
        "reverses_entry_id",
        "actor",
        "reason",
        "agent_id",
        "model",
        "charge_id",
        "top_up_id",
        "pack_id",
        "payout_id",
    ])
    .map_err(csv_err)?;
    let mut page = HistoryQuery { limit: MAX_PAGE, ..q.clone() };
    loop {
        let list = list(conn, account, &page)?;
        for t in &list.data {
            let r = &t.references;
            let opt = |v: &Option<String>| v.clone().unwrap_or_default();
            out.write_record([
                t.id.clone(),
                t.kind.clone(),
                t.amount.to_string(),
                t.balance_after.map(|b| b.to_string()).unwrap_or_default(),
                t.created_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                t.entry_id.clone(),
                opt(&t.reverses_entry_id),
                opt(&r.actor),
                opt(&r.reason),
                opt(&r.agent_id),
                opt(&r.model),
                opt(&r.charge_id),
                opt(&r.top_up_id),
                opt(&r.pack_id),
                opt(&r.payout_id),
            ])
            .map_err(csv_err)?;
        }
        match (list.has_more, list.data.last()) {
            (true, Some(last)) => page.starting_after = Some(last.id.clone()),
            _ => break,
        }
    }
    let bytes = out.into_inner().map_err(|e| ServiceError::Internal(format!("csv: {e}")))?;
    String::from_utf8(bytes).map_err(|e| ServiceError::Internal(format!("csv: {e}")))
}
