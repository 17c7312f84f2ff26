//! The PostgreSQL page of an account history.
//!
//! `WHERE account_id = ANY($ids) ORDER BY id DESC LIMIT n` lets the planner
//! walk the postings' primary key backwards and filter by account: cheap
//! when the account owns most recent postings, slow (thousands of rows read
//! and dropped) when it does not, and the planner cannot tell which from its
//! statistics. Taking up to `n` postings per account from the
//! `(account_id, id)` index in a `LATERAL` subquery, then merging, reads at
//! most `n` index entries per account whatever the distribution. The
//! filters (cursor, types, time) apply inside the subquery, so the merged
//! page is exactly the first `n` rows of the whole filtered history.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamp};

use super::models::HistoryRow;
use super::prepared::Prepared;
use super::DbConn;
use crate::domain::Credits;

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = BigInt)]
    posting_id: i64,
    #[diesel(sql_type = BigInt)]
    account_id: i64,
    #[diesel(sql_type = BigInt)]
    amount: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    balance_after: Option<i64>,
    #[diesel(sql_type = Timestamp)]
    created_at: NaiveDateTime,
    #[diesel(sql_type = BigInt)]
    entry_id: i64,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    reverses_entry_id: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    actor: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    memo: Option<String>,
    #[diesel(sql_type = Text)]
    metadata: String,
}

/// Up to `limit` rows of the accounts' merged history, newest first, below
/// `cursor`, of the given entry kinds (all when empty), in `[from, to)`.
/// PostgreSQL only.
pub fn page_per_account(
    conn: &mut DbConn,
    account_ids: &[i64],
    cursor: Option<i64>,
    kinds: &[&str],
    from: Option<NaiveDateTime>,
    to: Option<NaiveDateTime>,
    limit: i64,
) -> QueryResult<Vec<HistoryRow>> {
    let DbConn::Pg(pg) = conn else {
        return Err(diesel::result::Error::QueryBuilderError("a PostgreSQL-only query on SQLite".into()));
    };
    // Only the filters asked for are in the text (16 texts at most, each
    // kept prepared), so that the cursor is an index condition in every plan.
    let mut filters = String::new();
    let mut n = 1;
    let mut next = || {
        n += 1;
        n
    };
    if cursor.is_some() {
        filters.push_str(&format!(" AND p.id < ${}", next()));
    }
    if !kinds.is_empty() {
        filters.push_str(&format!(" AND e.kind = ANY(${})", next()));
    }
    if from.is_some() {
        filters.push_str(&format!(" AND p.created_at >= ${}", next()));
    }
    if to.is_some() {
        filters.push_str(&format!(" AND p.created_at < ${}", next()));
    }
    let limit_param = next();
    let sql = format!(
        "SELECT h.* FROM unnest($1) AS a(id) CROSS JOIN LATERAL ( \
           SELECT p.id AS posting_id, p.account_id, p.amount, p.balance_after, p.created_at, \
                  e.id AS entry_id, e.kind, e.reverses_entry_id, e.actor, e.memo, e.metadata \
           FROM postings p JOIN journal_entries e ON e.id = p.entry_id \
           WHERE p.account_id = a.id{filters} \
           ORDER BY p.id DESC LIMIT ${limit_param} \
         ) AS h ORDER BY h.posting_id DESC LIMIT ${limit_param}"
    );
    let mut query =
        diesel::sql_query(sql).into_boxed::<diesel::pg::Pg>().bind::<Array<BigInt>, _>(account_ids);
    if let Some(cursor) = cursor {
        query = query.bind::<BigInt, _>(cursor);
    }
    if !kinds.is_empty() {
        query = query.bind::<Array<Text>, _>(kinds.to_vec());
    }
    if let Some(from) = from {
        query = query.bind::<Timestamp, _>(from);
    }
    if let Some(to) = to {
        query = query.bind::<Timestamp, _>(to);
    }
    let rows: Vec<Row> = Prepared(query.bind::<BigInt, _>(limit)).load(pg)?;
    rows.into_iter()
        .map(|r| {
            let kind =
                r.kind.parse().map_err(|e: String| diesel::result::Error::DeserializationError(e.into()))?;
            Ok(HistoryRow {
                posting_id: r.posting_id,
                account_id: r.account_id,
                amount: Credits::from_micros(r.amount),
                balance_after: r.balance_after.map(Credits::from_micros),
                created_at: r.created_at,
                entry_id: r.entry_id,
                kind,
                reverses_entry_id: r.reverses_entry_id,
                actor: r.actor,
                memo: r.memo,
                metadata: r.metadata,
            })
        })
        .collect()
}
