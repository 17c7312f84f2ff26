//! API key rows and their daily spend counters. The counters change by one
//! upsert statement each (as `counters` does for wallets), the same SQL on
//! both backends.
#![deny(clippy::arithmetic_side_effects)]

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};

use super::prepared::Prepared;
use super::schema::accounts;
use super::DbConn;
use crate::domain::Credits;

diesel::table! {
    api_keys (id) {
        id -> Text,
        secret_hash -> Text,
        prefix -> Text,
        name -> Text,
        user_id -> Text,
        org_id -> Nullable<Text>,
        wallet_account_id -> BigInt,
        daily_limit -> Nullable<BigInt>,
        expires_at -> Nullable<Timestamp>,
        last_used_at -> Nullable<Timestamp>,
        revoked_at -> Nullable<Timestamp>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    api_key_spend (key_id, period) {
        key_id -> Text,
        period -> Text,
        spent -> BigInt,
    }
}

diesel::table! {
    api_key_holds (hold_id) {
        hold_id -> Text,
        key_id -> Text,
        period -> Text,
        amount -> BigInt,
    }
}

diesel::joinable!(api_keys -> accounts (wallet_account_id));
diesel::allow_tables_to_appear_in_same_query!(api_keys, accounts);

/// An API key as stored (never the secret).
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = api_keys)]
pub struct ApiKeyRow {
    pub id: String,
    pub secret_hash: String,
    pub prefix: String,
    pub name: String,
    pub user_id: String,
    pub org_id: Option<String>,
    pub wallet_account_id: i64,
    pub daily_limit: Option<Credits>,
    pub expires_at: Option<NaiveDateTime>,
    pub last_used_at: Option<NaiveDateTime>,
    pub revoked_at: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = api_keys, treat_none_as_default_value = false)]
pub struct NewApiKey<'a> {
    pub id: &'a str,
    pub secret_hash: &'a str,
    pub prefix: &'a str,
    pub name: &'a str,
    pub user_id: &'a str,
    pub org_id: Option<&'a str>,
    pub wallet_account_id: i64,
    pub daily_limit: Option<Credits>,
    pub expires_at: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
}

/// A key with its wallet's public id.
pub type KeyWithWallet = (ApiKeyRow, Option<String>);

/// The key whose secret hashes to `secret_hash` (the unique index), with
/// its wallet's public id.
pub fn find_by_hash(conn: &mut DbConn, secret_hash: &str) -> QueryResult<Option<KeyWithWallet>> {
    api_keys::table
        .inner_join(accounts::table)
        .filter(api_keys::secret_hash.eq(secret_hash))
        .select((ApiKeyRow::as_select(), accounts::public_id))
        .first(conn)
        .optional()
}

/// The key `id`, with its wallet's public id.
pub fn find(conn: &mut DbConn, id: &str) -> QueryResult<Option<KeyWithWallet>> {
    api_keys::table
        .inner_join(accounts::table)
        .filter(api_keys::id.eq(id))
        .select((ApiKeyRow::as_select(), accounts::public_id))
        .first(conn)
        .optional()
}

/// One page of the keys of `user_id` and of the organizations `org_ids`,
/// newest first, after the key `(created_at, id)` when given.
pub fn page(
    conn: &mut DbConn,
    user_id: &str,
    org_ids: &[String],
    after: Option<(NaiveDateTime, String)>,
    limit: i64,
) -> QueryResult<Vec<KeyWithWallet>> {
    let mut q = api_keys::table
        .inner_join(accounts::table)
        .filter(api_keys::user_id.eq(user_id).or(api_keys::org_id.eq_any(org_ids.to_vec())))
        .select((ApiKeyRow::as_select(), accounts::public_id))
        .order((api_keys::created_at.desc(), api_keys::id.desc()))
        .limit(limit)
        .into_boxed();
    if let Some((at, id)) = after {
        q = q.filter(api_keys::created_at.lt(at).or(api_keys::created_at.eq(at).and(api_keys::id.lt(id))));
    }
    q.load(conn)
}

/// Sets `last_used_at` to `now` unless it was set less than a minute
/// before (one guarded statement: a busy key's row is written at most once
/// a minute, whatever the number of instances).
pub fn touch(conn: &mut DbConn, id: &str, now: NaiveDateTime) -> QueryResult<()> {
    let a_minute_ago = now.checked_sub_signed(chrono::Duration::seconds(60)).unwrap_or(now);
    diesel::update(
        api_keys::table
            .find(id)
            .filter(api_keys::last_used_at.is_null().or(api_keys::last_used_at.le(a_minute_ago))),
    )
    .set(api_keys::last_used_at.eq(now))
    .execute(conn)
    .map(|_| ())
}

#[derive(QueryableByName)]
struct Returned {
    #[diesel(sql_type = BigInt)]
    value: i64,
}

/// Adds `amount` (not negative) to the key's counter of `period` unless
/// that would pass `limit` (none when `None`) or the `i64` range; the new
/// total, or `None` when refused (as `counters::add_spend`).
pub fn add_spend(
    conn: &mut DbConn,
    key_id: &str,
    period: &str,
    amount: i64,
    limit: Option<i64>,
) -> QueryResult<Option<i64>> {
    if amount < 0 || limit.is_some_and(|l| amount > l) {
        return Ok(None);
    }
    Prepared(
        diesel::sql_query(
            "INSERT INTO api_key_spend (key_id, period, spent) VALUES ($1, $2, $3) \
         ON CONFLICT (key_id, period) DO UPDATE SET spent = api_key_spend.spent + $3 \
         WHERE api_key_spend.spent <= 9223372036854775807 - $3 \
           AND ($4 IS NULL OR api_key_spend.spent <= $4 - $3) \
         RETURNING spent AS value",
        )
        .bind::<Text, _>(key_id)
        .bind::<Text, _>(period)
        .bind::<BigInt, _>(amount)
        .bind::<Nullable<BigInt>, _>(limit),
    )
    .get_result::<Returned>(conn)
    .optional()
    .map(|r| r.map(|r| r.value))
}

/// Takes `amount` back off the key's counter of `period`, never below zero.
pub fn give_back_spend(conn: &mut DbConn, key_id: &str, period: &str, amount: i64) -> QueryResult<()> {
    Prepared(
        diesel::sql_query(
            "UPDATE api_key_spend SET spent = CASE WHEN spent > $1 THEN spent - $1 ELSE 0 END \
         WHERE key_id = $2 AND period = $3 RETURNING spent AS value",
        )
        .bind::<BigInt, _>(amount.max(0))
        .bind::<Text, _>(key_id)
        .bind::<Text, _>(period),
    )
    .load::<Returned>(conn)
    .map(|_| ())
}

/// What the key spent in `period` (0 when untouched).
pub fn spent(conn: &mut DbConn, key_id: &str, period: &str) -> QueryResult<Credits> {
    let spent: Option<i64> =
        api_key_spend::table.find((key_id, period)).select(api_key_spend::spent).first(conn).optional()?;
    Ok(Credits::from_micros(spent.unwrap_or(0)))
}

/// The hold `hold_id` was made with a key: which, on which day, for how much.
pub fn hold_of(conn: &mut DbConn, hold_id: &str) -> QueryResult<Option<(String, String, i64)>> {
    api_key_holds::table
        .find(hold_id)
        .select((api_key_holds::key_id, api_key_holds::period, api_key_holds::amount))
        .first(conn)
        .optional()
}
