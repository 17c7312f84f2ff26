//! A wallet's usage grouped by day, model, agent or member: one grouped
//! statement over the charges it paid. The day (UTC) and the count of
//! tool calls (kept as JSON per charge) are written per backend; the rest
//! of the statement is the same on both.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text, Timestamp};

use super::{sums, DbConn};

/// What the usage is grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageGroup {
    /// The UTC calendar day of the charge (`YYYY-MM-DD`).
    Day,
    Model,
    Agent,
    /// The person who sent the message.
    Member,
}

/// One group's sums. Credits are split in two parts (see [`sums`]).
#[derive(Debug, QueryableByName)]
pub struct UsageRow {
    #[diesel(sql_type = Text)]
    pub key: String,
    #[diesel(sql_type = BigInt)]
    pub paid_messages: i64,
    #[diesel(sql_type = BigInt)]
    pub free_messages: i64,
    #[diesel(sql_type = BigInt)]
    pub input_tokens: i64,
    #[diesel(sql_type = BigInt)]
    pub output_tokens: i64,
    #[diesel(sql_type = BigInt)]
    pub generations: i64,
    #[diesel(sql_type = BigInt)]
    pub tool_calls: i64,
    #[diesel(sql_type = BigInt)]
    pub charged_hi: i64,
    #[diesel(sql_type = BigInt)]
    pub charged_lo: i64,
    #[diesel(sql_type = BigInt)]
    pub refunded_hi: i64,
    #[diesel(sql_type = BigInt)]
    pub refunded_lo: i64,
}

/// The wallet's (`account_id`) charges made in `[from, to)`, grouped, in
/// key order. What the wallet paid of a charge is its total less what a
/// capture beyond its hold left uncollected; operator refunds of a charge
/// count in the group of the charge they refund.
pub fn usage_by(
    conn: &mut DbConn,
    account_id: i64,
    from: NaiveDateTime,
    to: NaiveDateTime,
    group: UsageGroup,
) -> QueryResult<Vec<UsageRow>> {
    let pg = matches!(conn, DbConn::Pg(_));
    let key = match (group, pg) {
        (UsageGroup::Day, true) => "to_char(c.created_at, 'YYYY-MM-DD')",
        (UsageGroup::Day, false) => "strftime('%Y-%m-%d', c.created_at)",
        (UsageGroup::Model, _) => "c.model_id",
        (UsageGroup::Agent, _) => "c.agent_id",
        (UsageGroup::Member, _) => "c.user_id",
    };
    // `{"tool_id": calls}` (NULL for a per-message charge: no rows).
    let tool_calls = if pg {
        "(SELECT CAST(SUM(CAST(t.value AS BIGINT)) AS BIGINT) FROM json_each_text(CAST(c.tool_calls AS json)) AS t)"
    } else {
        "(SELECT SUM(CAST(t.value AS INTEGER)) FROM json_each(c.tool_calls) AS t)"
    };
    let refunded = "COALESCE((SELECT CAST(SUM(r.amount) AS BIGINT) FROM charge_refunds r \
                    WHERE r.charge_id = c.id), 0)";
    let count = |x: &str| format!("CAST(COALESCE(SUM({x}), 0) AS BIGINT)");
    let sql = format!(
        "SELECT {key} AS key, \
           {} AS paid_messages, {} AS free_messages, \
           {} AS input_tokens, {} AS output_tokens, {} AS generations, {} AS tool_calls, \
           {}, {} \
         FROM charges c \
         WHERE c.payer_account_id = $1 AND c.created_at >= $2 AND c.created_at < $3 \
         GROUP BY {key} ORDER BY {key}",
        count("CASE WHEN c.free THEN 0 ELSE 1 END"),
        count("CASE WHEN c.free THEN 1 ELSE 0 END"),
        count("COALESCE(c.input_tokens, 0)"),
        count("COALESCE(c.output_tokens, 0)"),
        count("COALESCE(c.generations, 0)"),
        count(&format!("COALESCE({tool_calls}, 0)")),
        sums::select("c.total - c.uncollected", "charged"),
        sums::select(refunded, "refunded"),
    );
    diesel::sql_query(sql)
        .bind::<BigInt, _>(account_id)
        .bind::<Timestamp, _>(from)
        .bind::<Timestamp, _>(to)
        .load(conn)
}
