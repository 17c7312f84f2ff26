//! Transaction history of an account: newest first, keyset pagination on the
//! posting id (stable under concurrent inserts, as fast on page 10,000 as on
//! page 1), filters by type and time, and CSV export a page at a time.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ServiceError, ServiceResult};
use crate::db::models::HistoryRow;
use crate::db::schema::{journal_entries, postings};
use crate::db::DbConn;
use crate::domain::ids::{entry_id, parse_transaction_id, transaction_id};
use crate::domain::usage::Usage;
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
    /// A metered charge's input tokens (charges sent with a usage only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    /// A metered charge's output tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    /// A metered charge's calls per tool id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<BTreeMap<String, u64>>,
    /// A metered charge's generated assets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generations: Option<u64>,
    /// A top-up's validity (`30d`, `90d`, `lifetime`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validity: Option<crate::domain::Validity>,
    /// The grant a promotional grant or an expiry is about (`grt_`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
}

impl TransactionReferences {
    /// The references with the usage a charge was priced by (none for a
    /// charge without a usage), recorded in the entry when it is posted so
    /// that a history row needs no read of the charge.
    pub fn with_usage(self, usage: Option<&Usage>) -> Self {
        TransactionReferences {
            input_tokens: usage.map(|u| u.input_tokens),
            output_tokens: usage.map(|u| u.output_tokens),
            tool_calls: usage.map(|u| u.tool_calls.clone()),
            generations: usage.map(|u| u.generations),
            ..self
        }
    }

    /// The calls per tool as a CSV cell shows them: the JSON object
    /// (`{"web_search":2}`), empty without a usage.
    fn tool_calls_cell(&self) -> String {
        self.tool_calls.as_ref().and_then(|t| serde_json::to_string(t).ok()).unwrap_or_default()
    }
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
    read_page(conn, accounts, q)
}

/// A page of `q.limit` rows, whatever its size.
fn read_page(conn: &mut DbConn, accounts: &[AccountRef], q: &HistoryQuery) -> ServiceResult<TransactionList> {
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

/// Rows per page of a CSV export: one page is read with one pooled
/// connection, then written out; the connection goes back to the pool
/// between pages, and memory holds one page at a time.
pub const EXPORT_PAGE: i64 = 500;

/// The columns of a CSV export. New columns go at the end, so that readers
/// of the older columns keep working.
const EXPORT_COLUMNS: [&str; 20] = [
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
    "input_tokens",
    "output_tokens",
    "tool_calls",
    "generations",
    "hold_id",
];

/// One page of a CSV export: its rows, and the cursor of the next page
/// (none when the history ends here).
pub struct ExportPage {
    pub csv: Vec<u8>,
    pub next: Option<String>,
}

fn csv_error(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Internal(format!("csv: {e}"))
}

/// The header row of a CSV export.
pub fn export_header() -> ServiceResult<Vec<u8>> {
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record(EXPORT_COLUMNS).map_err(csv_error)?;
    out.into_inner().map_err(csv_error)
}

/// A text cell as a spreadsheet shows it rather than runs it: a cell that
/// begins with `=`, `+`, `-`, `@`, tab or carriage return is read as a
/// formula by Excel, LibreOffice and Google Sheets, so it gets a leading
/// `'` (OWASP, "CSV Injection"). Ids, reasons, actors and models are text
/// that callers chose; the amounts tally writes itself stay numbers.
fn text_cell(value: &str) -> std::borrow::Cow<'_, str> {
    if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        std::borrow::Cow::Owned(format!("'{value}"))
    } else {
        std::borrow::Cow::Borrowed(value)
    }
}

/// Up to [`EXPORT_PAGE`] rows of the filtered history below `cursor` (a
/// `txn_` id, the `next` of the page before) as CSV, newest first. The
/// keyset is the posting id, strictly decreasing, so the pages of one
/// export never repeat a row, whatever is written between them.
pub fn export_page(
    conn: &mut DbConn,
    account: AccountRef,
    q: &HistoryQuery,
    cursor: Option<String>,
) -> ServiceResult<ExportPage> {
    let page = HistoryQuery { limit: EXPORT_PAGE, starting_after: cursor, ..q.clone() };
    let list = read_page(conn, &[account], &page)?;
    let mut out = csv::Writer::from_writer(Vec::new());
    for t in &list.data {
        let r = &t.references;
        let text = |v: &Option<String>| text_cell(v.as_deref().unwrap_or_default()).into_owned();
        let count = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_default();
        out.write_record([
            text_cell(&t.id).into_owned(),
            text_cell(&t.kind).into_owned(),
            t.amount.to_string(),
            t.balance_after.map(|b| b.to_string()).unwrap_or_default(),
            t.created_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            text_cell(&t.entry_id).into_owned(),
            text(&t.reverses_entry_id),
            text(&r.actor),
            text(&r.reason),
            text(&r.agent_id),
            text(&r.model),
            text(&r.charge_id),
            text(&r.top_up_id),
            text(&r.pack_id),
            text(&r.payout_id),
            count(r.input_tokens),
            count(r.output_tokens),
            text_cell(&r.tool_calls_cell()).into_owned(),
            count(r.generations),
            text(&r.hold_id),
        ])
        .map_err(csv_error)?;
    }
    let next = match (list.has_more, list.data.last()) {
        (true, Some(last)) => Some(last.id.clone()),
        _ => None,
    };
    Ok(ExportPage { csv: out.into_inner().map_err(csv_error)?, next })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_get_a_leading_quote() {
        for (cell, shown) in [
            ("=1+1", "'=1+1"),
            ("+1", "'+1"),
            ("-2", "'-2"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("\rx", "'\rx"),
            ("plain", "plain"),
            ("a=b", "a=b"),
            ("", ""),
        ] {
            assert_eq!(text_cell(cell), shown, "{cell:?}");
        }
    }
}
