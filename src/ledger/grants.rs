//! Credit grants: what a wallet's balance is made of.
//!
//! Every credit that enters a wallet opens a grant (paid or promotional,
//! with an expiry or none); every debit draws from the wallet's grants in
//! one order ([`draw_order`]): promotional before paid, then the soonest
//! expiry first (never-expiring last), then the oldest. Each draw and each
//! give-back is a `grant_draws` row, so
//! - a grant's `remaining` is its `amount` less the sum of its draws, and
//! - a wallet's balance, when not below zero, is the sum of its grants'
//!   `remaining` (a wallet below zero has none left: a credit first covers
//!   the deficit, then what is left of it opens or refills grants).
//!
//! `ledger verify` checks both. The grants of a wallet are only read and
//! written after its row is locked (the entry's guarded balance update,
//! which [`super::OpenEntry::post`] makes first), so two movements of one
//! wallet never race on its grants.
#![deny(clippy::arithmetic_side_effects)]

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::db::prepared::Prepared;
use crate::db::schema::{credit_grants, grant_draws};
use crate::db::DbConn;
use crate::domain::entry::Leg;
use crate::domain::ids::new_id;
use crate::domain::{Credits, GrantCategory, GrantSource};

use super::LedgerError;

/// What an entry's wallet leg does to the wallet's grants. Every entry that
/// moves a wallet says it; the ledger refuses one that does not.
#[derive(Clone, Debug, Default)]
pub enum Grants {
    /// The entry moves no wallet.
    #[default]
    None,
    /// A debit draws in the drawdown order (a credit is refused), recorded
    /// for `hold` when a hold reserves it.
    Draw { hold: Option<String> },
    /// A debit takes up to the amount from each of these grants first (a
    /// top-up's refund: its own grants), then draws in order.
    DrawFirst(Vec<(i64, Credits)>),
    /// A debit takes the whole remainder of one grant (its expiry).
    Expire(i64),
    /// A credit opens these grants; their amounts sum to it.
    Open(Vec<GrantSpec>),
    /// For a hold ending: a credit gives back what the hold still has drawn
    /// (the last draw first); a debit (a capture above the hold) draws in
    /// order.
    Hold(String),
    /// A credit gives back what this earlier entry drew (the last draw
    /// first): a dispute won. What no draw can take back opens a lifetime
    /// paid grant (`returned`).
    Undo(Option<i64>),
    /// A credit refunds (part of) a charge: back to the grants the charge
    /// drew from (its entries' draws, and its hold's), the last draw first;
    /// what a grant that has expired since cannot take opens a new grant
    /// that expires with the latest of the grants the charge drew from.
    Refund { entries: Vec<i64>, hold: Option<String> },
}

/// A grant a credit opens.
#[derive(Clone, Debug)]
pub struct GrantSpec {
    pub category: GrantCategory,
    pub amount: Credits,
    pub expires_at: Option<NaiveDateTime>,
    pub source: GrantSource,
    pub source_id: Option<String>,
    /// The account the credits came from (see the migration).
    pub funded_by: Option<i64>,
}

/// A grant row.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = credit_grants)]
pub struct GrantRow {
    pub id: i64,
    pub public_id: String,
    pub account_id: i64,
    pub category: GrantCategory,
    pub amount: Credits,
    pub remaining: Credits,
    pub expires_at: Option<NaiveDateTime>,
    pub source: GrantSource,
    pub source_id: Option<String>,
    pub funded_by_account_id: Option<i64>,
    pub entry_id: Option<i64>,
    pub created_at: NaiveDateTime,
}

/// `None` fields are written as NULL, never as `DEFAULT`, so the statement
/// text is fixed and diesel keeps it prepared (as for [`NewDraw`]).
#[derive(Insertable)]
#[diesel(table_name = credit_grants, treat_none_as_default_value = false)]
struct NewGrantRow<'a> {
    public_id: &'a str,
    account_id: i64,
    category: GrantCategory,
    amount: Credits,
    remaining: Credits,
    expires_at: Option<NaiveDateTime>,
    source: GrantSource,
    source_id: Option<&'a str>,
    funded_by_account_id: Option<i64>,
    entry_id: Option<i64>,
    created_at: NaiveDateTime,
}

#[derive(Insertable)]
#[diesel(table_name = grant_draws, treat_none_as_default_value = false)]
struct NewDraw<'a> {
    grant_id: i64,
    entry_id: i64,
    hold_id: Option<&'a str>,
    amount: Credits,
    created_at: NaiveDateTime,
}

/// One wallet leg of a posted entry, as the grants need it.
#[derive(Clone, Copy)]
pub(super) struct WalletMove {
    pub account_id: i64,
    pub amount: Credits,
    pub balance_after: Credits,
    pub entry_id: i64,
    pub at: NaiveDateTime,
}

fn range(account_id: i64) -> LedgerError {
    LedgerError::OutOfRange { account_id }
}

fn invalid(message: String) -> LedgerError {
    LedgerError::Database(diesel::result::Error::QueryBuilderError(message.into()))
}

/// Applies a wallet leg to the wallet's grants (its row is locked).
pub(super) fn apply(conn: &mut DbConn, m: &WalletMove, grants: &Grants) -> Result<(), LedgerError> {
    if m.amount.is_zero() {
        return Ok(());
    }
    let before = m.balance_after.checked_sub(m.amount).ok_or_else(|| range(m.account_id))?;
    if m.amount.is_positive() {
        // A credit first covers what the wallet owed (a balance below zero).
        let owed = before.min(Credits::ZERO).checked_neg().ok_or_else(|| range(m.account_id))?;
        let covered = owed.min(m.amount);
        return match grants {
            Grants::Open(specs) => open(conn, m, specs, covered),
            Grants::Hold(hold) => give_back(conn, m, covered, Source::Hold(hold)),
            Grants::Undo(entry) => give_back(conn, m, covered, Source::Entry(*entry)),
            Grants::Refund { entries, hold } => {
                give_back(conn, m, covered, Source::Charge { entries, hold: hold.as_deref() })
            }
            other => Err(invalid(format!("a credit of wallet {} cannot be {other:?}", m.account_id))),
        };
    }
    let amount = m.amount.checked_neg().ok_or_else(|| range(m.account_id))?;
    // What the grants hold is the balance before (or nothing when below
    // zero): a debit past it (a reversal) leaves the rest uncovered.
    let covered = amount.min(before.max(Credits::ZERO));
    match grants {
        Grants::Draw { hold } => draw(conn, m, covered, &[], hold.as_deref(), false),
        Grants::Hold(_) => draw(conn, m, covered, &[], None, false),
        Grants::DrawFirst(first) => draw(conn, m, covered, first, None, false),
        Grants::Expire(grant) => draw(conn, m, covered, &[(*grant, amount)], None, true),
        other => Err(invalid(format!("a debit of wallet {} cannot be {other:?}", m.account_id))),
    }
}

/// Opens the grants of a credit; the first `covered` credits pay what the
/// wallet owed (a draw on the grants opened, in the drawdown order).
fn open(conn: &mut DbConn, m: &WalletMove, specs: &[GrantSpec], covered: Credits) -> Result<(), LedgerError> {
    let total = specs
        .iter()
        .try_fold(Credits::ZERO, |sum, s| sum.checked_add(s.amount))
        .ok_or_else(|| range(m.account_id))?;
    if total != m.amount || specs.iter().any(|s| !s.amount.is_positive()) {
        return Err(invalid(format!("grants of {total} for a credit of {}", m.amount)));
    }
    for spec in specs {
        let public_id = new_id("grt");
        diesel::insert_into(credit_grants::table)
            .values(NewGrantRow {
                public_id: &public_id,
                account_id: m.account_id,
                category: spec.category,
                amount: spec.amount,
                remaining: spec.amount,
                expires_at: spec.expires_at,
                source: spec.source,
                source_id: spec.source_id.as_deref(),
                funded_by_account_id: spec.funded_by,
                entry_id: Some(m.entry_id),
                created_at: m.at,
            })
            .execute(conn)?;
    }
    if covered.is_positive() {
        draw(conn, m, covered, &[], None, false)?;
    }
    Ok(())
}

/// The grants a draw takes from, in the drawdown order: promotional before
/// paid, then the soonest `expires_at` (none last), then the oldest.
macro_rules! draw_order {
    () => {
        (
            // 'promotional' sorts after 'paid': descending puts it first.
            credit_grants::category.desc(),
            credit_grants::expires_at.is_null().asc(),
            credit_grants::expires_at.asc(),
            credit_grants::id.asc(),
        )
    };
}

/// [`draw_order`] in SQL, for hand-written statements.
const DRAW_ORDER: &str = "category DESC, expires_at IS NULL, expires_at, id";

/// The wallet's grants that can be spent at `at`, in the drawdown order.
fn live(
    conn: &mut DbConn,
    account_id: i64,
    at: NaiveDateTime,
    limit: i64,
) -> QueryResult<Vec<(i64, Credits)>> {
    credit_grants::table
        .filter(credit_grants::account_id.eq(account_id))
        .filter(credit_grants::live)
        .filter(credit_grants::expires_at.is_null().or(credit_grants::expires_at.gt(at)))
        .order(draw_order!())
        .select((credit_grants::id, credit_grants::remaining))
        .limit(limit)
        .load(conn)
}

/// What the wallet's grants hold that can be spent at `at` (expired
/// remainders wait for the sweep and cannot).
pub fn spendable(conn: &mut DbConn, account_id: i64, at: NaiveDateTime) -> QueryResult<Credits> {
    let rows: Vec<Credits> = credit_grants::table
        .filter(credit_grants::account_id.eq(account_id))
        .filter(credit_grants::live)
        .filter(credit_grants::expires_at.is_null().or(credit_grants::expires_at.gt(at)))
        .select(credit_grants::remaining)
        .load(conn)?;
    Ok(rows.into_iter().fold(Credits::ZERO, |sum, r| sum.checked_add(r).unwrap_or(Credits::MAX)))
}

/// Takes `take` from one grant (guarded: never below zero) and records it.
fn take_from(
    conn: &mut DbConn,
    m: &WalletMove,
    grant: i64,
    take: Credits,
    hold: Option<&str>,
) -> Result<(), LedgerError> {
    // SQL, not Rust: the guard keeps it at or above zero.
    #[allow(clippy::arithmetic_side_effects)]
    let after = credit_grants::remaining - take.micros();
    let taken: Option<i64> = Prepared(
        diesel::update(
            credit_grants::table
                .filter(credit_grants::id.eq(grant))
                .filter(credit_grants::remaining.ge(take.micros())),
        )
        .set(credit_grants::remaining.eq(after))
        .returning(credit_grants::id),
    )
    .get_result(conn)
    .optional()?;
    if taken.is_none() {
        return Err(LedgerError::Insufficient { account_id: m.account_id });
    }
    record(conn, m, grant, take, hold)
}

fn record(
    conn: &mut DbConn,
    m: &WalletMove,
    grant: i64,
    amount: Credits,
    hold: Option<&str>,
) -> Result<(), LedgerError> {
    diesel::insert_into(grant_draws::table)
        .values(NewDraw { grant_id: grant, entry_id: m.entry_id, hold_id: hold, amount, created_at: m.at })
        .execute(conn)?;
    Ok(())
}

/// Draws `amount`: up to the given amount from each of `first` (its
/// grants of the wallet only), then from the live grants in the drawdown
/// order. `exact`: only from `first` (an expiry). Too little in the grants
/// that can be spent now is `Insufficient` (their credits expired).
fn draw(
    conn: &mut DbConn,
    m: &WalletMove,
    amount: Credits,
    first: &[(i64, Credits)],
    hold: Option<&str>,
    exact: bool,
) -> Result<(), LedgerError> {
    let mut left = amount;
    for &(grant, most) in first {
        if !left.is_positive() {
            break;
        }
        let remaining: Option<Credits> = credit_grants::table
            .filter(credit_grants::id.eq(grant))
            .filter(credit_grants::account_id.eq(m.account_id))
            .select(credit_grants::remaining)
            .first(conn)
            .optional()?;
        let take = left.min(most).min(remaining.unwrap_or(Credits::ZERO));
        if take.is_positive() {
            take_from(conn, m, grant, take, hold)?;
            left = left.checked_sub(take).ok_or_else(|| range(m.account_id))?;
        }
    }
    if exact {
        return if left.is_zero() {
            Ok(())
        } else {
            Err(LedgerError::Insufficient { account_id: m.account_id })
        };
    }
    // Most debits fit in the first grant in order: one statement then.
    if first.is_empty() && left.is_positive() && draw_all_from_first(conn, m, left, hold)? {
        return Ok(());
    }
    draw_in_order(conn, m, left, hold)
}

/// Draws `left` from the live grants in the drawdown order, a few read at
/// a time.
fn draw_in_order(
    conn: &mut DbConn,
    m: &WalletMove,
    mut left: Credits,
    hold: Option<&str>,
) -> Result<(), LedgerError> {
    while left.is_positive() {
        let batch = live(conn, m.account_id, m.at, 4)?;
        if batch.is_empty() {
            return Err(LedgerError::Insufficient { account_id: m.account_id });
        }
        for (grant, remaining) in batch {
            let take = left.min(remaining);
            take_from(conn, m, grant, take, hold)?;
            left = left.checked_sub(take).ok_or_else(|| range(m.account_id))?;
            if left.is_zero() {
                break;
            }
        }
    }
    Ok(())
}

/// Gives `amount` back to the grants a charge drew (`drawn`, net, the last
/// first); the part whose grant has expired opens a grant per category
/// that expires with the latest of the grants the charge drew from (never,
/// if one of them never expires).
fn refund_to(
    conn: &mut DbConn,
    m: &WalletMove,
    amount: Credits,
    drawn: Vec<(i64, Credits)>,
) -> Result<(), LedgerError> {
    let ids: Vec<i64> = drawn.iter().map(|(g, _)| *g).collect();
    let grants: Vec<GrantRow> = credit_grants::table
        .filter(credit_grants::id.eq_any(&ids))
        .select(GrantRow::as_select())
        .load(conn)?;
    let latest = if grants.iter().any(|g| g.expires_at.is_none()) {
        None
    } else {
        grants.iter().filter_map(|g| g.expires_at).max()
    };
    let mut left = amount;
    let mut lapsed: Vec<GrantSpec> = Vec::new();
    for (grant, outstanding) in drawn {
        let back = left.min(outstanding);
        if !back.is_positive() {
            continue;
        }
        let row =
            grants.iter().find(|g| g.id == grant).ok_or_else(|| invalid(format!("grant {grant} is gone")))?;
        if row.expires_at.is_some_and(|t| t <= m.at) {
            match lapsed.iter_mut().find(|s| s.category == row.category) {
                Some(s) => s.amount = s.amount.checked_add(back).ok_or_else(|| range(m.account_id))?,
                None => lapsed.push(GrantSpec {
                    category: row.category,
                    amount: back,
                    expires_at: latest,
                    source: GrantSource::Returned,
                    source_id: row.source_id.clone(),
                    funded_by: row.funded_by_account_id,
                }),
            }
        } else {
            put_back(conn, m, grant, back, None)?;
        }
        left = left.checked_sub(back).ok_or_else(|| range(m.account_id))?;
    }
    if left.is_positive() {
        return Err(invalid(format!("{left} refunded credits were not drawn by the charge")));
    }
    if !lapsed.is_empty() {
        let total = lapsed
            .iter()
            .try_fold(Credits::ZERO, |sum, s| sum.checked_add(s.amount))
            .ok_or_else(|| range(m.account_id))?;
        open(conn, &WalletMove { amount: total, ..*m }, &lapsed, Credits::ZERO)?;
    }
    Ok(())
}

/// Adds `back` to a grant (guarded: never above its amount) and records it.
fn put_back(
    conn: &mut DbConn,
    m: &WalletMove,
    grant: i64,
    back: Credits,
    hold: Option<&str>,
) -> Result<(), LedgerError> {
    // SQL, not Rust: the guard keeps it at or below the grant's amount.
    #[allow(clippy::arithmetic_side_effects)]
    let (after, room) = (credit_grants::remaining + back.micros(), credit_grants::amount - back.micros());
    let given: Option<i64> = Prepared(
        diesel::update(
            credit_grants::table
                .filter(credit_grants::id.eq(grant))
                .filter(credit_grants::remaining.le(room)),
        )
        .set(credit_grants::remaining.eq(after))
        .returning(credit_grants::id),
    )
    .get_result(conn)
    .optional()?;
    if given.is_none() {
        return Err(invalid(format!("grant {grant} cannot take back {back}")));
    }
    record(conn, m, grant, back.checked_neg().ok_or_else(|| range(m.account_id))?, hold)
}

#[derive(QueryableByName)]
struct Drawn {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    value: i64,
}

/// Takes all of `amount` from the wallet's first grant in the drawdown
/// order if that grant holds it, and records the draw; false (nothing
/// written) when it does not. On PostgreSQL one statement (a round trip
/// instead of three), on SQLite two. Hand-written SQL: diesel's DSL has
/// no data-modifying CTE. The order is [`draw_order`]'s.
fn draw_all_from_first(
    conn: &mut DbConn,
    m: &WalletMove,
    amount: Credits,
    hold: Option<&str>,
) -> Result<bool, LedgerError> {
    use diesel::sql_types::{BigInt, Nullable, Text, Timestamp};
    let first = format!(
        "SELECT id FROM credit_grants \
         WHERE account_id = $2 AND live AND (expires_at IS NULL OR expires_at > $3) \
         ORDER BY {DRAW_ORDER} LIMIT 1"
    );
    match conn {
        DbConn::Pg(_) => {
            let sql = format!(
                "WITH taken AS (UPDATE credit_grants SET remaining = remaining - $1 WHERE id = ({first}) \
                 AND remaining >= $1 RETURNING id) \
                 INSERT INTO grant_draws (grant_id, entry_id, hold_id, amount, created_at) \
                 SELECT id, $4, $5, $1, $3 FROM taken RETURNING grant_id AS value"
            );
            let drawn = Prepared(
                diesel::sql_query(sql)
                    .bind::<BigInt, _>(amount.micros())
                    .bind::<BigInt, _>(m.account_id)
                    .bind::<Timestamp, _>(m.at)
                    .bind::<BigInt, _>(m.entry_id)
                    .bind::<Nullable<Text>, _>(hold),
            )
            .get_result::<Drawn>(conn)
            .optional()?;
            Ok(drawn.is_some())
        }
        DbConn::Sqlite(_) => {
            let sql = format!(
                "UPDATE credit_grants SET remaining = remaining - $1 WHERE id = ({first}) \
                 AND remaining >= $1 RETURNING id AS value"
            );
            let taken = Prepared(
                diesel::sql_query(sql)
                    .bind::<BigInt, _>(amount.micros())
                    .bind::<BigInt, _>(m.account_id)
                    .bind::<Timestamp, _>(m.at),
            )
            .get_result::<Drawn>(conn)
            .optional()?;
            match taken {
                Some(d) => record(conn, m, d.value, amount, hold).map(|()| true),
                None => Ok(false),
            }
        }
    }
}

/// A debit drawn in the drawdown order (`Grants::Draw`), tried first from
/// the wallet's first grant alone in the statement that writes the entry
/// (PostgreSQL; see `ledger::PostAll`): most debits fit in it.
pub(super) struct FirstDraw<'g> {
    account_id: i64,
    entry_id: i64,
    at: NaiveDateTime,
    amount: Credits,
    hold: Option<&'g str>,
    /// The statement's member `u{wallet}` that moves the wallet's balance:
    /// the draw runs only once it has (the wallet's row locked first).
    wallet: usize,
}

/// The first-grant draw of the wallet's `leg` (of entry `entry_id`, made
/// `at`) when `grants` draws it in order. Only for a debit that must stay
/// covered (its update, member `u{wallet}` of the statement, refuses a
/// balance below zero): whenever it goes through, the balance before held
/// all of it, and so do the grants.
pub(super) fn first_draw<'g>(
    leg: &Leg,
    entry_id: i64,
    at: NaiveDateTime,
    grants: &'g Grants,
    wallet: usize,
) -> Option<FirstDraw<'g>> {
    let Grants::Draw { hold } = grants else { return None };
    let amount = leg.amount.checked_neg().filter(|a| a.is_positive())?;
    Some(FirstDraw { account_id: leg.account_id, entry_id, at, amount, hold: hold.as_deref(), wallet })
}

impl FirstDraw<'_> {
    /// `taken AS (UPDATE credit_grants ...), drawn AS (INSERT INTO
    /// grant_draws ... RETURNING grant_id)`: the statement of
    /// [`draw_all_from_first`] as members of a `WITH`.
    pub(super) fn walk_ctes<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, DbBackend>,
    ) -> QueryResult<()> {
        use diesel::sql_types::{BigInt, Nullable, Text, Timestamp};
        let amount = &self.amount;
        out.push_sql("taken AS (UPDATE credit_grants SET remaining = remaining - ");
        out.push_bind_param::<BigInt, _>(amount)?;
        out.push_sql(" WHERE id = (SELECT id FROM credit_grants WHERE account_id = ");
        out.push_bind_param::<BigInt, _>(&self.account_id)?;
        out.push_sql(" AND live AND (expires_at IS NULL OR expires_at > ");
        out.push_bind_param::<Timestamp, _>(&self.at)?;
        out.push_sql(") ORDER BY ");
        out.push_sql(DRAW_ORDER);
        out.push_sql(" LIMIT 1) AND remaining >= ");
        out.push_bind_param::<BigInt, _>(amount)?;
        out.push_sql(&format!(" AND EXISTS (SELECT 1 FROM u{})", self.wallet));
        out.push_sql(
            " RETURNING id), drawn AS (INSERT INTO grant_draws (grant_id, entry_id, hold_id, amount, created_at) \
             SELECT id, ",
        );
        out.push_bind_param::<BigInt, _>(&self.entry_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<Text>, _>(&self.hold)?;
        out.push_sql(", ");
        out.push_bind_param::<BigInt, _>(amount)?;
        out.push_sql(", ");
        out.push_bind_param::<Timestamp, _>(&self.at)?;
        out.push_sql(" FROM taken RETURNING grant_id)");
        Ok(())
    }

    /// After the statement: a debit the first grant did not hold whole is
    /// drawn in order (`m`: the wallet's move, its balance after known now).
    pub(super) fn finish(&self, conn: &mut DbConn, m: &WalletMove, drawn: bool) -> Result<(), LedgerError> {
        if drawn {
            return Ok(());
        }
        draw_in_order(conn, m, self.amount, self.hold)
    }
}

type DbBackend = <DbConn as diesel::Connection>::Backend;

/// What a give-back returns credits to.
enum Source<'a> {
    /// What a hold still has drawn.
    Hold(&'a str),
    /// What an entry drew (none: nothing).
    Entry(Option<i64>),
    /// What a charge still has drawn: its entries' draws and its hold's.
    Charge { entries: &'a [i64], hold: Option<&'a str> },
}

/// On PostgreSQL, when a hold still has credits drawn from one grant only
/// and they cover `back`: gives `back` to that grant (guarded: never above
/// its amount) and records it, in one statement (a round trip instead of
/// three: what the loop of [`give_back`] does for one grant); false
/// (nothing written) otherwise, and on SQLite, which has no data-modifying
/// `WITH`. Most holds draw from one grant. Hand-written SQL, as
/// [`draw_all_from_first`].
fn give_back_to_the_one_grant(
    conn: &mut DbConn,
    m: &WalletMove,
    back: Credits,
    hold: &str,
) -> Result<bool, LedgerError> {
    use diesel::sql_types::{BigInt, Text, Timestamp};
    if !matches!(conn, DbConn::Pg(_)) {
        return Ok(false);
    }
    let given = crate::fixed!(diesel::sql_query(
        "WITH d AS (SELECT grant_id, SUM(amount) AS outstanding FROM grant_draws \
                    WHERE hold_id = $1 GROUP BY grant_id HAVING SUM(amount) > 0), \
              one AS (SELECT grant_id FROM d WHERE outstanding >= $2 AND (SELECT count(*) FROM d) = 1), \
              given AS (UPDATE credit_grants SET remaining = remaining + $2 \
                        WHERE id = (SELECT grant_id FROM one) AND remaining <= amount - $2 RETURNING id) \
         INSERT INTO grant_draws (grant_id, entry_id, hold_id, amount, created_at) \
         SELECT id, $3, $1, $4, $5 FROM given RETURNING grant_id AS value"
    )
    .bind::<Text, _>(hold)
    .bind::<BigInt, _>(back.micros())
    .bind::<BigInt, _>(m.entry_id)
    .bind::<BigInt, _>(back.checked_neg().ok_or_else(|| range(m.account_id))?.micros())
    .bind::<Timestamp, _>(m.at))
    .get_result::<Drawn>(conn)
    .optional()?;
    Ok(given.is_some())
}

/// Nets draws (grant, amount; the last first) per grant, keeping the order
/// of each grant's last draw.
fn net_per_grant(rows: Vec<(i64, Credits)>, account_id: i64) -> Result<Vec<(i64, Credits)>, LedgerError> {
    let mut outstanding: Vec<(i64, Credits)> = Vec::new();
    for (grant, amount) in rows {
        match outstanding.iter_mut().find(|(g, _)| *g == grant) {
            Some((_, sum)) => *sum = sum.checked_add(amount).ok_or_else(|| range(account_id))?,
            None => outstanding.push((grant, amount)),
        }
    }
    Ok(outstanding)
}

/// Gives `m.amount` back to the grants it was drawn from (the last draw
/// first), less the `covered` part that pays what the wallet owed. A grant
/// that expired meanwhile takes its credits back too: the next sweep
/// expires them with it.
fn give_back(
    conn: &mut DbConn,
    m: &WalletMove,
    covered: Credits,
    source: Source<'_>,
) -> Result<(), LedgerError> {
    let mut left = m.amount.checked_sub(covered).ok_or_else(|| range(m.account_id))?;
    if !left.is_positive() {
        return Ok(());
    }
    let (drawn, hold): (Vec<(i64, Credits)>, Option<&str>) = match source {
        Source::Hold(hold) => {
            if give_back_to_the_one_grant(conn, m, left, hold)? {
                return Ok(());
            }
            let rows: Vec<(i64, Credits)> = grant_draws::table
                .filter(grant_draws::hold_id.eq(hold))
                .order(grant_draws::id.desc())
                .select((grant_draws::grant_id, grant_draws::amount))
                .load(conn)?;
            // What the hold still has drawn, per grant, the last drawn first.
            (net_per_grant(rows, m.account_id)?, Some(hold))
        }
        Source::Charge { entries, hold } => {
            let rows: Vec<(i64, Credits)> = grant_draws::table
                .filter(grant_draws::entry_id.eq_any(entries).or(grant_draws::hold_id.nullable().eq(hold)))
                .order(grant_draws::id.desc())
                .select((grant_draws::grant_id, grant_draws::amount))
                .load(conn)?;
            return refund_to(conn, m, left, net_per_grant(rows, m.account_id)?);
        }
        Source::Entry(entry) => (
            grant_draws::table
                .filter(grant_draws::entry_id.nullable().eq(entry))
                .order(grant_draws::id.desc())
                .select((grant_draws::grant_id, grant_draws::amount))
                .load(conn)?,
            None,
        ),
    };
    for (grant, outstanding) in drawn {
        if !left.is_positive() {
            break;
        }
        let back = left.min(outstanding);
        if !back.is_positive() {
            continue;
        }
        put_back(conn, m, grant, back, hold)?;
        left = left.checked_sub(back).ok_or_else(|| range(m.account_id))?;
    }
    if left.is_positive() {
        if matches!(source, Source::Hold(_)) {
            return Err(invalid(format!("{left} credits have no grant to go back to")));
        }
        let spec = GrantSpec {
            category: GrantCategory::Paid,
            amount: left,
            expires_at: None,
            source: GrantSource::Returned,
            source_id: None,
            funded_by: None,
        };
        let m = WalletMove { amount: left, ..*m };
        open(conn, &m, &[spec], Credits::ZERO)?;
    }
    Ok(())
}
