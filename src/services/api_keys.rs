//! API keys: secrets a person creates for server-to-server and SDK calls.
//!
//! A key authenticates as the person who made it, bound to one wallet (the
//! person's, or an organization's for a key an org owner or admin made),
//! with an optional daily spend limit and expiry. The secret is shown once;
//! only its SHA-256 is stored (a 192-bit random secret needs no slow hash)
//! and looked up through a unique index. Every request reads the key's row
//! again: there is no cache, so a revocation holds for the next request on
//! every instance.
//!
//! The daily limit is one guarded upsert per UTC day in the charge's (or
//! hold's) transaction, taken after the wallet's own counters and balance,
//! so that every transaction takes these rows in one order.
#![deny(clippy::arithmetic_side_effects)]

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use super::charges::{Charge, UsageQuote};
use super::holds::Hold;
use super::idempotency::Outcome;
use super::orgs::role_in;
use super::{people, ServiceError, ServiceResult};
use crate::db::api_keys::{self as rows, ApiKeyRow, KeyWithWallet, NewApiKey};
use crate::db::{self, DbConn, WriteTx};
use crate::domain::ids::new_id;
use crate::domain::limits::Period;
use crate::domain::text::checked_text;
use crate::domain::{AccountKind, Credits, OrgRole, OwnerType};

/// Random bytes in a secret (192 bits).
const SECRET_BYTES: usize = 24;
/// Hex characters of the random part shown in `prefix`.
const SHOWN_HEX: usize = 8;
/// The most keys one page lists.
pub const MAX_PAGE: i64 = 100;

/// An API key as its owner sees it (never the secret).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApiKey {
    /// `ak_` id: what logs and errors name.
    pub id: String,
    pub name: String,
    /// The first characters of the secret, to recognise it (`tk_live_1a2b3c4d`).
    pub prefix: String,
    /// The person who made it: requests made with it act as this person.
    pub user_id: String,
    /// The organization whose wallet it pays from (null: the person's own).
    pub org_id: Option<String>,
    /// The wallet it is bound to.
    pub wallet_id: String,
    /// Most credits it may spend per UTC day (null: no key limit; the
    /// wallet's and member's limits apply either way).
    #[schema(value_type = Option<String>, example = "10")]
    pub daily_limit: Option<Credits>,
    /// Credits spent with it today (UTC), holds included.
    #[schema(value_type = String, example = "2.6")]
    pub spent_today: Credits,
    /// What the daily limit leaves today (null without a limit).
    #[schema(value_type = Option<String>, example = "7.4")]
    pub daily_remaining: Option<Credits>,
    /// After this it is refused with 401 `api_key_expired` (null: never).
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was last used, to the minute (null: never).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked (null: it is not).
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// A new key, with its secret: shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub key: ApiKey,
    /// The secret to send as `Authorization: Bearer <secret>`; tally keeps
    /// only its hash and cannot show it again.
    pub secret: String,
}

/// A page of keys, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyList {
    pub data: Vec<ApiKey>,
    /// More follow: ask with `starting_after` = the last id.
    pub has_more: bool,
}

/// A new key, as asked.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub name: String,
    pub org_id: Option<String>,
    pub daily_limit: Option<Credits>,
    pub expires_at: Option<NaiveDateTime>,
}

/// The key a request authenticated with: who it acts as, and what it is
/// bound to.
#[derive(Debug, Clone)]
pub struct KeyPrincipal {
    pub id: String,
    pub user_id: String,
    pub org_id: Option<String>,
    pub wallet_account_id: i64,
    pub wallet_id: String,
    pub daily_limit: Option<Credits>,
    /// When it was last marked used (see [`touch_if_stale`]).
    pub last_used_at: Option<NaiveDateTime>,
}

/// Why a key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    /// Unknown or malformed: the same answer for both.
    Invalid,
    Revoked,
    Expired,
}

/// The SHA-256 of a secret, in hex.
fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new secret: the mode's prefix, then 192 random bits from the
/// operating system, in hex.
fn new_secret(test_mode: bool) -> ServiceResult<String> {
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| ServiceError::Internal(format!("no randomness: {e}")))?;
    let mode = if test_mode { "tk_test_" } else { "tk_live_" };
    Ok(format!("{mode}{}", hex::encode(bytes)))
}

/// Whether a bearer token is meant as an API key (rather than a JWT).
pub fn is_api_key(token: &str) -> bool {
    token.starts_with("tk_")
}

/// The key a secret names, if it is usable now. Every secret, malformed or
/// not, is hashed and looked up, and the stored hash compared in constant
/// time (against itself when none was found), so an unknown key costs what
/// a known one does.
pub fn authenticate(conn: &mut DbConn, secret: &str) -> ServiceResult<Result<KeyPrincipal, KeyRefusal>> {
    let hashed = hash(secret);
    let found = rows::find_by_hash(conn, &hashed)?;
    let stored = found.as_ref().map_or(hashed.as_str(), |(row, _)| row.secret_hash.as_str());
    let equal: bool = stored.as_bytes().ct_eq(hashed.as_bytes()).into();
    let Some((row, wallet)) = found.filter(|_| equal) else {
        return Ok(Err(KeyRefusal::Invalid));
    };
    if row.revoked_at.is_some() {
        return Ok(Err(KeyRefusal::Revoked));
    }
    if row.expires_at.is_some_and(|at| at <= db::now()) {
        return Ok(Err(KeyRefusal::Expired));
    }
    Ok(Ok(KeyPrincipal {
        id: row.id,
        user_id: row.user_id,
        org_id: row.org_id,
        wallet_account_id: row.wallet_account_id,
        wallet_id: wallet.unwrap_or_default(),
        daily_limit: row.daily_limit,
        last_used_at: row.last_used_at,
    }))
}

/// Whether the key's `last_used_at` is more than a minute old (only then is
/// it written: [`touch`]).
pub fn touch_if_stale(key: &KeyPrincipal) -> bool {
    let now = db::now();
    let a_minute_ago = now.checked_sub_signed(chrono::Duration::seconds(60)).unwrap_or(now);
    key.last_used_at.is_none_or(|at| at <= a_minute_ago)
}

/// Marks the key used now (unless another request did within the minute).
pub fn touch(conn: &mut DbConn, key_id: &str) -> ServiceResult<()> {
    Ok(rows::touch(conn, key_id, db::now())?)
}

fn view(conn: &mut DbConn, (row, wallet): KeyWithWallet) -> ServiceResult<ApiKey> {
    let spent_today = rows::spent(conn, &row.id, &Period::Day.key(db::now()))?;
    let daily_remaining = row
        .daily_limit
        .map(|limit| limit.checked_sub(spent_today).unwrap_or(Credits::ZERO).max(Credits::ZERO));
    Ok(ApiKey {
        id: row.id,
        name: row.name,
        prefix: row.prefix,
        user_id: row.user_id,
        org_id: row.org_id,
        wallet_id: wallet.unwrap_or_default(),
        daily_limit: row.daily_limit,
        spent_today,
        daily_remaining,
        expires_at: row.expires_at.map(|t| t.and_utc()),
        last_used_at: row.last_used_at.map(|t| t.and_utc()),
        revoked_at: row.revoked_at.map(|t| t.and_utc()),
        created_at: row.created_at.and_utc(),
    })
}

fn check_limit(limit: Option<Credits>) -> ServiceResult<()> {
    if limit.is_some_and(Credits::is_negative) {
        return Err(ServiceError::Validation("daily_limit must not be negative".into()));
    }
    Ok(())
}

/// `POST /v1/api-keys`: a key on the caller's wallet, or on an
/// organization's wallet for its owners and admins.
pub fn create_key(
    tx: &mut WriteTx<'_>,
    test_mode: bool,
    user_id: &str,
    input: &NewKey,
) -> ServiceResult<CreatedApiKey> {
    let name = checked_text("name", &input.name, 100, false).map_err(ServiceError::Validation)?;
    check_limit(input.daily_limit)?;
    let now = db::now();
    if input.expires_at.is_some_and(|at| at <= now) {
        return Err(ServiceError::Validation("expires_at must be in the future".into()));
    }
    let wallet = match &input.org_id {
        Some(org_id) => {
            if !role_in(tx, org_id, user_id)?.can_manage() {
                return Err(ServiceError::Forbidden(
                    "only an owner or admin of the organization may make a key on its wallet".into(),
                ));
            }
            crate::db::accounts::account_of(tx, OwnerType::Org, org_id, AccountKind::Wallet)?
                .ok_or(ServiceError::NotFound("organization"))?
        }
        None => people::ensure_person(tx, user_id)?,
    };
    let secret = new_secret(test_mode)?;
    let shown = secret.len().saturating_sub(SECRET_BYTES.saturating_mul(2)).saturating_add(SHOWN_HEX);
    let prefix = secret.get(..shown).unwrap_or(&secret);
    let id = new_id("ak");
    diesel::RunQueryDsl::execute(
        diesel::insert_into(rows::api_keys::table).values(NewApiKey {
            id: &id,
            secret_hash: &hash(&secret),
            prefix,
            name,
            user_id,
            org_id: input.org_id.as_deref(),
            wallet_account_id: wallet.id,
            daily_limit: input.daily_limit,
            expires_at: input.expires_at,
            created_at: now,
        }),
        tx.conn(),
    )?;
    let key = load_managed(tx, user_id, &id)?;
    Ok(CreatedApiKey { key: view(tx, key)?, secret })
}

/// Whether `user_id` may see and manage the key: its maker, or an owner or
/// admin of its organization.
fn may_manage(conn: &mut DbConn, user_id: &str, row: &ApiKeyRow) -> ServiceResult<bool> {
    if row.user_id == user_id {
        return Ok(true);
    }
    match &row.org_id {
        Some(org) => Ok(role_in(conn, org, user_id).is_ok_and(OrgRole::can_manage)),
        None => Ok(false),
    }
}

/// The key, if `user_id` may manage it; 404 otherwise, as for an unknown id.
fn load_managed(conn: &mut DbConn, user_id: &str, key_id: &str) -> ServiceResult<KeyWithWallet> {
    let found = rows::find(conn, key_id)?.ok_or(ServiceError::NotFound("API key"))?;
    if !may_manage(conn, user_id, &found.0)? {
        return Err(ServiceError::NotFound("API key"));
    }
    Ok(found)
}

/// `GET /v1/api-keys/{id}`.
pub fn get_key(conn: &mut DbConn, user_id: &str, key_id: &str) -> ServiceResult<ApiKey> {
    let key = load_managed(conn, user_id, key_id)?;
    view(conn, key)
}

/// `GET /v1/api-keys`: the caller's keys and those of the organizations
/// they own or administer, newest first, keyset-paginated.
pub fn list_keys(
    conn: &mut DbConn,
    user_id: &str,
    limit: i64,
    starting_after: Option<&str>,
) -> ServiceResult<ApiKeyList> {
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ServiceError::Validation(format!("limit must be 1 to {MAX_PAGE}")));
    }
    let after = match starting_after {
        Some(cursor) => {
            let (row, _) = load_managed(conn, user_id, cursor).map_err(|_| {
                ServiceError::Validation(format!("starting_after '{cursor}' is not one of your API keys"))
            })?;
            Some((row.created_at, row.id))
        }
        None => None,
    };
    let org_ids = managed_orgs(conn, user_id)?;
    let mut page = rows::page(conn, user_id, &org_ids, after, limit.saturating_add(1))?;
    let has_more = page.len() as i64 > limit;
    page.truncate(usize::try_from(limit).unwrap_or(0));
    let data = page.into_iter().map(|k| view(conn, k)).collect::<ServiceResult<Vec<_>>>()?;
    Ok(ApiKeyList { data, has_more })
}

/// The organizations `user_id` owns or administers.
fn managed_orgs(conn: &mut DbConn, user_id: &str) -> ServiceResult<Vec<String>> {
    use crate::db::schema::org_members as m;
    use diesel::prelude::*;
    let roles = [OrgRole::Owner.as_str(), OrgRole::Admin.as_str()];
    Ok(m::table.filter(m::user_id.eq(user_id)).filter(m::role.eq_any(roles)).select(m::org_id).load(conn)?)
}

/// `PATCH /v1/api-keys/{id}`: a new name and/or daily limit (`Some(None)`
/// removes the limit).
pub fn update_key(
    conn: &mut DbConn,
    user_id: &str,
    key_id: &str,
    name: Option<String>,
    daily_limit: Option<Option<Credits>>,
) -> ServiceResult<ApiKey> {
    use diesel::prelude::*;
    let name = name
        .as_deref()
        .map(|n| checked_text("name", n, 100, false).map_err(ServiceError::Validation))
        .transpose()?;
    if let Some(limit) = daily_limit {
        check_limit(limit)?;
    }
    db::write_tx(conn, |tx| {
        let (row, _) = load_managed(tx, user_id, key_id)?;
        let k = rows::api_keys::table.find(&row.id);
        if let Some(name) = name {
            diesel::update(k).set(rows::api_keys::name.eq(name)).execute(tx.conn())?;
        }
        if let Some(limit) = daily_limit {
            diesel::update(k).set(rows::api_keys::daily_limit.eq(limit)).execute(tx.conn())?;
        }
        let key = load_managed(tx, user_id, key_id)?;
        view(tx, key)
    })
}

/// `DELETE /v1/api-keys/{id}`: revokes the key (idempotent: a revoked key
/// keeps its first `revoked_at`).
pub fn revoke_key(conn: &mut DbConn, user_id: &str, key_id: &str) -> ServiceResult<ApiKey> {
    use diesel::prelude::*;
    db::write_tx(conn, |tx| {
        let (row, _) = load_managed(tx, user_id, key_id)?;
        diesel::update(rows::api_keys::table.find(&row.id).filter(rows::api_keys::revoked_at.is_null()))
            .set(rows::api_keys::revoked_at.eq(db::now()))
            .execute(tx.conn())?;
        let key = load_managed(tx, user_id, key_id)?;
        view(tx, key)
    })
}

/// The refusal of `amount` by the key's daily limit.
fn key_refusal(key: &KeyPrincipal, amount: Credits, limit: Option<Credits>) -> ServiceError {
    let Some(limit) = limit else {
        return ServiceError::out_of_range();
    };
    ServiceError::KeyLimitExceeded {
        key_id: key.id.clone(),
        message: format!(
            "this charge of {amount} credits would pass the daily limit of API key {} ({limit} credits)",
            key.id
        ),
        retry_after_secs: Period::Day.seconds_left(db::now()),
    }
}

/// Counts a charge (or a hold) of `amount` against the key's day: one
/// guarded upsert in the transaction that moves the money; a refusal rolls
/// all of it back. Returns what the day's limit leaves (null without one).
pub fn count_spend(
    tx: &mut WriteTx<'_>,
    key: &KeyPrincipal,
    amount: Credits,
) -> ServiceResult<Option<Credits>> {
    let day = Period::Day.key(db::now());
    let limit = reload_limit(tx, key)?;
    let spent = if amount.is_zero() {
        rows::spent(tx, &key.id, &day)?
    } else {
        let counted = rows::add_spend(tx, &key.id, &day, amount.micros(), limit.map(Credits::micros))?;
        Credits::from_micros(counted.ok_or_else(|| key_refusal(key, amount, limit))?)
    };
    Ok(limit.map(|l| l.checked_sub(spent).unwrap_or(Credits::ZERO).max(Credits::ZERO)))
}

/// The key's limit as stored now (a PATCH between authentication and the
/// charge counts).
fn reload_limit(conn: &mut DbConn, key: &KeyPrincipal) -> ServiceResult<Option<Credits>> {
    Ok(rows::find(conn, &key.id)?.map_or(key.daily_limit, |(row, _)| row.daily_limit))
}

/// What the key may still spend today (null without a limit).
pub fn remaining(conn: &mut DbConn, key: &KeyPrincipal) -> ServiceResult<Option<Credits>> {
    let limit = reload_limit(conn, key)?;
    let spent = rows::spent(conn, &key.id, &Period::Day.key(db::now()))?;
    Ok(limit.map(|l| l.checked_sub(spent).unwrap_or(Credits::ZERO).max(Credits::ZERO)))
}

/// The refusal a charge of `amount` with the key would get now, if any
/// (for a quote; counts nothing).
pub fn check_spend(
    conn: &mut DbConn,
    key: &KeyPrincipal,
    amount: Credits,
) -> ServiceResult<Option<ServiceError>> {
    let limit = reload_limit(conn, key)?;
    let spent = rows::spent(conn, &key.id, &Period::Day.key(db::now()))?;
    let refused = match (spent.checked_add(amount), limit) {
        (None, _) => true,
        (Some(after), Some(limit)) => after > limit,
        (Some(_), None) => false,
    };
    Ok(refused.then(|| key_refusal(key, amount, limit)))
}

/// A hold made with the key: its amount counts against the key's day (and
/// is remembered, so that its end gives back or adds to that day).
pub fn count_hold(
    tx: &mut WriteTx<'_>,
    key: &KeyPrincipal,
    hold_id: &str,
    amount: Credits,
) -> ServiceResult<Option<Credits>> {
    use diesel::prelude::*;
    let remaining = count_spend(tx, key, amount)?;
    diesel::insert_into(rows::api_key_holds::table)
        .values((
            rows::api_key_holds::hold_id.eq(hold_id),
            rows::api_key_holds::key_id.eq(&key.id),
            rows::api_key_holds::period.eq(Period::Day.key(db::now())),
            rows::api_key_holds::amount.eq(amount.micros()),
        ))
        .execute(tx.conn())?;
    Ok(remaining)
}

/// A hold ended without a charge (released or expired): the key's day gets
/// back what the hold counted. Nothing for a hold made without a key.
pub fn give_back_hold(tx: &mut WriteTx<'_>, hold_id: &str) -> ServiceResult<()> {
    if let Some((key_id, period, amount)) = rows::hold_of(tx, hold_id)? {
        rows::give_back_spend(tx, &key_id, &period, amount)?;
    }
    Ok(())
}

/// A hold made with a key was captured and the wallet paid `paid`: the
/// key's day of the hold gets back what the hold counted beyond it, or
/// counts the excess (never refused: the work is done).
pub fn settle_capture(tx: &mut WriteTx<'_>, hold_id: &str, paid: Credits) -> ServiceResult<()> {
    let Some((key_id, period, held)) = rows::hold_of(tx, hold_id)? else {
        return Ok(());
    };
    let paid = paid.micros();
    if paid <= held {
        rows::give_back_spend(tx, &key_id, &period, held.saturating_sub(paid))?;
    } else {
        rows::add_spend(tx, &key_id, &period, paid.saturating_sub(held), None)?;
    }
    Ok(())
}

/// The wallet (account id) a hold reserves on, if the hold exists.
pub fn hold_wallet(conn: &mut DbConn, hold_id: &str) -> ServiceResult<Option<i64>> {
    use crate::db::schema::holds;
    use diesel::prelude::*;
    Ok(holds::table.find(hold_id).select(holds::payer_account_id).first(conn).optional()?)
}

/// The header that tells a key's caller what its daily limit leaves.
pub const REMAINING_HEADER: &str = "X-Key-Daily-Remaining";

fn with_remaining<T>(mut outcome: Outcome<T>, remaining: Option<Credits>) -> Outcome<T> {
    if let Some(r) = remaining {
        outcome.headers.push((REMAINING_HEADER.to_string(), r.to_string()));
    }
    outcome
}

/// A charge made with a key (in its transaction): counts its total against
/// the key's day (a refusal undoes the charge) and adds
/// `X-Key-Daily-Remaining`. Without a key, the charge as it is.
pub fn after_charge(
    tx: &mut WriteTx<'_>,
    key: Option<&KeyPrincipal>,
    outcome: Outcome<Charge>,
) -> ServiceResult<Outcome<Charge>> {
    let Some(key) = key else {
        return Ok(outcome);
    };
    let remaining = count_spend(tx, key, outcome.body.total)?;
    Ok(with_remaining(outcome, remaining))
}

/// A hold made with a key (in its transaction): its amount counts against
/// the key's day, remembered for the hold's end.
pub fn after_hold(
    tx: &mut WriteTx<'_>,
    key: Option<&KeyPrincipal>,
    outcome: Outcome<Hold>,
) -> ServiceResult<Outcome<Hold>> {
    let Some(key) = key else {
        return Ok(outcome);
    };
    let remaining = count_hold(tx, key, &outcome.body.id, outcome.body.amount)?;
    Ok(with_remaining(outcome, remaining))
}

/// A capture (in its transaction): a hold made with a key settles that
/// key's day with what the wallet paid ([`settle_capture`]), whoever
/// captures it; a capture made with a key adds `X-Key-Daily-Remaining`.
pub fn after_capture(
    tx: &mut WriteTx<'_>,
    key: Option<&KeyPrincipal>,
    hold_id: &str,
    outcome: Outcome<Charge>,
) -> ServiceResult<Outcome<Charge>> {
    let paid =
        outcome.body.total.checked_sub(outcome.body.uncollected).ok_or_else(ServiceError::out_of_range)?;
    settle_capture(tx, hold_id, paid)?;
    match key {
        Some(key) => {
            let remaining = remaining(tx, key)?;
            Ok(with_remaining(outcome, remaining))
        }
        None => Ok(outcome),
    }
}

/// A quote asked with a key: a charge of its total that the key's daily
/// limit would refuse is not `allowed` (`spend_limit_exceeded`).
pub fn check_quote(
    conn: &mut DbConn,
    key: Option<&KeyPrincipal>,
    mut quote: UsageQuote,
) -> ServiceResult<UsageQuote> {
    let Some(key) = key else {
        return Ok(quote);
    };
    if quote.allowed && !quote.quote.total.is_zero() {
        if let Some(refusal) = check_spend(conn, key, quote.quote.total)? {
            quote.allowed = false;
            quote.reason = Some(super::ErrorCode::SpendLimitExceeded);
            quote.message = Some(refusal.to_string());
        }
    }
    Ok(quote)
}

/// With a key, a hold on another wallet than the key's is not found (404,
/// as for an unknown id).
pub fn check_hold(conn: &mut DbConn, key: Option<&KeyPrincipal>, hold_id: &str) -> ServiceResult<()> {
    let Some(key) = key else {
        return Ok(());
    };
    match hold_wallet(conn, hold_id)? {
        Some(wallet) if wallet == key.wallet_account_id => Ok(()),
        _ => Err(ServiceError::NotFound("hold")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_carry_the_mode_and_192_random_bits() {
        let live = new_secret(false).unwrap();
        let test = new_secret(true).unwrap();
        assert!(live.starts_with("tk_live_") && live.len() == 8 + 48, "{live}");
        assert!(test.starts_with("tk_test_") && test.len() == 8 + 48, "{test}");
        assert_ne!(live[8..], test[8..]);
        assert!(is_api_key(&live) && !is_api_key("eyJhbGciOi"));
        assert_eq!(hash(&live).len(), 64);
        assert_ne!(hash(&live), hash(&test));
    }
}
