//! Counters changed by one upsert statement each, so that a check and its
//! increment cannot be split by a concurrent request. The SQL is the same on
//! both backends (`INSERT ... ON CONFLICT ... DO UPDATE ... WHERE ...
//! RETURNING`, SQLite 3.35+); placeholders are written `$n` in order of first
//! use, which SQLite binds by position as PostgreSQL does. Each text is
//! fixed, so each statement is kept prepared ([`Prepared`]).
#![deny(clippy::arithmetic_side_effects)]

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Nullable, Text};

use super::prepared::Prepared;
use super::DbConn;
use crate::domain::Credits;

#[derive(QueryableByName)]
struct Returned {
    #[diesel(sql_type = BigInt)]
    value: i64,
}

/// Uses one free message of `agent_id` for `user_id` if fewer than `limit`
/// were used; returns how many are used now, or `None` when none were left.
pub fn use_free_message(
    conn: &mut DbConn,
    agent_id: &str,
    user_id: &str,
    limit: i32,
) -> QueryResult<Option<i64>> {
    if limit <= 0 {
        return Ok(None);
    }
    Prepared(
        diesel::sql_query(
            "INSERT INTO free_message_usage (agent_id, user_id, used) VALUES ($1, $2, 1) \
         ON CONFLICT (agent_id, user_id) DO UPDATE SET used = free_message_usage.used + 1 \
         WHERE free_message_usage.used < $3 \
         RETURNING CAST(used AS BIGINT) AS value",
        )
        .bind::<Text, _>(agent_id)
        .bind::<Text, _>(user_id)
        .bind::<Integer, _>(limit),
    )
    .get_result::<Returned>(conn)
    .optional()
    .map(|r| r.map(|r| r.value))
}

/// Free messages `user_id` has used on `agent_id`.
pub fn free_messages_used(conn: &mut DbConn, agent_id: &str, user_id: &str) -> QueryResult<i64> {
    use super::schema::free_message_usage as f;
    let used: Option<i32> = f::table.find((agent_id, user_id)).select(f::used).first(conn).optional()?;
    Ok(used.unwrap_or(0) as i64)
}

/// Adds `amount` (positive) to a spend counter unless that would pass
/// `limit` (no limit when `None`) or the `i64` range; returns the new total,
/// or `None` when refused. With a limit, a refusal means the limit (the
/// range is above any limit); without one, it means the range. Neither
/// guard forms `spent + amount` before it is known to fit.
pub fn add_spend(
    conn: &mut DbConn,
    account_id: i64,
    user_id: &str,
    period: &str,
    amount: i64,
    limit: Option<i64>,
) -> QueryResult<Option<i64>> {
    if amount < 0 || limit.is_some_and(|l| amount > l) {
        return Ok(None);
    }
    Prepared(
        diesel::sql_query(
            "INSERT INTO spend_counters (account_id, user_id, period, spent) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (account_id, user_id, period) DO UPDATE SET spent = spend_counters.spent + $4 \
         WHERE spend_counters.spent <= 9223372036854775807 - $4 \
           AND ($5 IS NULL OR spend_counters.spent <= $5 - $4) \
         RETURNING spent AS value",
        )
        .bind::<BigInt, _>(account_id)
        .bind::<Text, _>(user_id)
        .bind::<Text, _>(period)
        .bind::<BigInt, _>(amount)
        .bind::<Nullable<BigInt>, _>(limit),
    )
    .get_result::<Returned>(conn)
    .optional()
    .map(|r| r.map(|r| r.value))
}

/// Takes `amount` (not negative) back off a spend counter, never below
/// zero: what a released or smaller-than-held capture had counted.
pub fn give_back_spend(
    conn: &mut DbConn,
    account_id: i64,
    user_id: &str,
    period: &str,
    amount: i64,
) -> QueryResult<()> {
    Prepared(
        diesel::sql_query(
            "UPDATE spend_counters SET spent = CASE WHEN spent > $1 THEN spent - $1 ELSE 0 END \
         WHERE account_id = $2 AND user_id = $3 AND period = $4",
        )
        .bind::<BigInt, _>(amount.max(0))
        .bind::<BigInt, _>(account_id)
        .bind::<Text, _>(user_id)
        .bind::<Text, _>(period),
    )
    .execute(conn)
    .map(|_| ())
}

/// Gives back one free message a released hold had reserved.
pub fn give_back_free_message(conn: &mut DbConn, agent_id: &str, user_id: &str) -> QueryResult<()> {
    Prepared(
        diesel::sql_query(
            "UPDATE free_message_usage SET used = used - 1 WHERE agent_id = $1 AND user_id = $2 AND used > 0",
        )
        .bind::<Text, _>(agent_id)
        .bind::<Text, _>(user_id),
    )
    .execute(conn)
    .map(|_| ())
}

/// What a spend counter holds (0 when untouched).
pub fn spent(conn: &mut DbConn, account_id: i64, user_id: &str, period: &str) -> QueryResult<Credits> {
    use super::schema::spend_counters as s;
    let spent: Option<Credits> =
        s::table.find((account_id, user_id, period)).select(s::spent).first(conn).optional()?;
    Ok(spent.unwrap_or(Credits::ZERO))
}
