//! The ledger: the one door through which value moves. Every movement is one
//! journal entry whose postings sum to zero; entries are append-only (the
//! database refuses updates and deletes). Balances that a movement must check
//! are cached on the account row and changed by a guarded `UPDATE` in the same
//! transaction; the others are the sum of their postings.
#![deny(clippy::arithmetic_side_effects)]

mod balance;
pub mod grants;
pub mod spend;
pub mod verify;

pub use grants::{GrantSpec, Grants};
pub use spend::{Spend, SpendChange};

use chrono::NaiveDateTime;
use diesel::prelude::*;

use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Nullable, Timestamp};

use crate::db::models::{NewAccount, NewEntryRow};
use crate::db::prepared::Prepared;
use crate::db::schema::{accounts, journal_entries, postings};
use crate::db::{self, DbConn, WriteTx};
use crate::domain::entry::{check_balanced, EntryError, Leg};
use crate::domain::{AccountKind, Credits, EntryKind, OwnerType};

/// An account as the ledger needs it: its row id and kind (which says whether
/// it keeps a cached balance and whether it may go below zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountRef {
    pub id: i64,
    pub kind: AccountKind,
}

impl AccountRef {
    pub fn leg(self, amount: Credits) -> Leg {
        Leg { account_id: self.id, kind: self.kind, amount }
    }
}

/// What a debit may do to an account that must stay at or above zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overdraft {
    /// Refuse a debit below zero.
    Refuse,
    /// Refuse a debit below zero, and any debit of a frozen account.
    RefuseFrozen,
    /// Allow it: only refunds and dispute reversals, which then freeze the wallet.
    AllowForReversal,
}

/// An entry to write.
#[derive(Debug)]
pub struct NewEntry<'a> {
    pub kind: EntryKind,
    pub legs: Vec<Leg>,
    pub overdraft: Overdraft,
    pub reverses: Option<i64>,
    /// The idempotency key of the request that made the entry; unique, so a
    /// retried request can never write a second entry.
    pub request_key: Option<&'a str>,
    pub actor: Option<&'a str>,
    pub memo: Option<&'a str>,
    /// References shown in history (agent, model, pack, payout ...), as JSON.
    pub metadata: serde_json::Value,
    /// What the wallet leg does to the wallet's credit grants.
    pub grants: Grants,
    /// What the entry counts against (or gives back to) its payer wallet's
    /// spend of the day and week, applied in the wallet leg's balance update.
    pub spend: Option<Spend>,
}

/// One written posting.
#[derive(Clone, Copy, Debug)]
pub struct PostedLeg {
    pub account_id: i64,
    pub posting_id: i64,
    pub amount: Credits,
    pub balance_after: Option<Credits>,
}

/// A written entry.
#[derive(Clone, Debug)]
pub struct PostedEntry {
    pub entry_id: i64,
    pub created_at: NaiveDateTime,
    pub legs: Vec<PostedLeg>,
}

impl PostedEntry {
    pub fn leg_of(&self, account_id: i64) -> Option<&PostedLeg> {
        self.legs.iter().find(|l| l.account_id == account_id)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("invalid entry: {0}")]
    Invalid(#[from] EntryError),
    #[error("account {account_id} has insufficient balance")]
    Insufficient { account_id: i64 },
    #[error("account {account_id} is frozen")]
    Frozen { account_id: i64 },
    /// The spend would pass the wallet's daily or weekly spend limit.
    #[error("account {account_id} would pass its {period:?} spend limit of {limit}")]
    SpendLimit { account_id: i64, period: crate::domain::limits::Period, limit: Credits, amount: Credits },
    /// The movement would take a cached balance past the `i64` micro-credit range.
    #[error("account {account_id} would pass the range of an amount")]
    OutOfRange { account_id: i64 },
    #[error(transparent)]
    Database(#[from] diesel::result::Error),
}

/// Writes one balanced entry. Must run inside a write transaction
/// ([`db::write_tx`]); on any error the caller's transaction rolls back and
/// nothing is written.
///
/// Cached balances are updated in ascending account id order, so two entries
/// touching the same accounts cannot deadlock on PostgreSQL.
pub fn post(tx: &mut WriteTx<'_>, entry: NewEntry<'_>) -> Result<PostedEntry, LedgerError> {
    open(tx, entry)?.post(tx)
}

/// Opens a balanced entry: its id is taken now, and its postings and
/// cached balances are written by [`OpenEntry::post`], in the same
/// transaction. In between, the caller may [`OpenEntry::attach`] rows that
/// refer to the entry (a charge, an accrual), which are written with the
/// postings. An entry left open makes the transaction fail `ledger verify`
/// (an entry without postings), so every success path must post it.
///
/// On PostgreSQL the journal row is written by the same statement as the
/// postings and the attached rows (one round trip instead of one per row;
/// its id comes from the sequence now). On SQLite, where a statement costs
/// no round trip, it is written now.
pub fn open<'a>(tx: &mut WriteTx<'_>, entry: NewEntry<'_>) -> Result<OpenEntry<'a>, LedgerError> {
    open_as(tx, None, entry)
}

/// SQL for the next entry id, to read in a query the caller makes anyway
/// (then given to [`open_as`]): `nextval(...)` on PostgreSQL, `NULL` on
/// SQLite (where [`open`] writes the row and its id comes with it).
pub fn next_entry_id_sql(conn: &DbConn) -> &'static str {
    match conn {
        DbConn::Pg(_) => NEXT_ENTRY_ID,
        DbConn::Sqlite(_) => "NULL",
    }
}

const NEXT_ENTRY_ID: &str = "nextval('journal_entries_id_seq')";

/// [`open`] with the entry's id already taken ([`next_entry_id_sql`]; `None`:
/// take it now).
pub fn open_as<'a>(
    tx: &mut WriteTx<'_>,
    reserved: Option<i64>,
    entry: NewEntry<'_>,
) -> Result<OpenEntry<'a>, LedgerError> {
    check_balanced(&entry.legs)?;
    let now = db::now();
    let metadata = entry.metadata.to_string();
    let (entry_id, journal) = match tx.conn() {
        DbConn::Pg(_) => {
            let id = match reserved {
                Some(id) => id,
                None => Prepared(diesel::select(diesel::dsl::sql::<BigInt>(NEXT_ENTRY_ID)))
                    .get_result::<i64>(tx.conn())?,
            };
            let journal = JournalRow {
                kind: entry.kind,
                reverses: entry.reverses,
                request_key: entry.request_key.map(str::to_string),
                actor: entry.actor.map(str::to_string),
                memo: entry.memo.map(str::to_string),
                metadata,
            };
            (id, Some(journal))
        }
        DbConn::Sqlite(_) => {
            let id = diesel::insert_into(journal_entries::table)
                .values(NewEntryRow {
                    kind: entry.kind,
                    reverses_entry_id: entry.reverses,
                    request_key: entry.request_key,
                    actor: entry.actor,
                    memo: entry.memo,
                    metadata: &metadata,
                    created_at: now,
                })
                .returning(journal_entries::id)
                .get_result(tx.conn())?;
            (id, None)
        }
    };
    Ok(OpenEntry {
        entry_id,
        created_at: now,
        legs: entry.legs,
        overdraft: entry.overdraft,
        grants: entry.grants,
        spend: entry.spend,
        journal,
        attached: Vec::new(),
    })
}

/// The journal row of an open entry, written with its postings (PostgreSQL).
#[derive(Debug)]
struct JournalRow {
    kind: EntryKind,
    reverses: Option<i64>,
    request_key: Option<String>,
    actor: Option<String>,
    memo: Option<String>,
    metadata: String,
}

/// A row that refers to an open entry (an `INSERT`), written with the
/// entry's postings: on PostgreSQL as a member of the postings statement's
/// `WITH`, so its text must be fixed (no `RETURNING` read back).
pub type Attached<'a> = Box<dyn QueryFragment<Backend> + 'a>;

/// A journal entry written without its postings yet; see [`open`].
#[must_use = "an open entry must be posted in the same transaction"]
pub struct OpenEntry<'a> {
    entry_id: i64,
    created_at: NaiveDateTime,
    legs: Vec<Leg>,
    overdraft: Overdraft,
    grants: Grants,
    spend: Option<Spend>,
    /// Not yet written (PostgreSQL).
    journal: Option<JournalRow>,
    attached: Vec<Attached<'a>>,
}

impl std::fmt::Debug for OpenEntry<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenEntry")
            .field("entry_id", &self.entry_id)
            .field("legs", &self.legs)
            .field("attached", &self.attached.len())
            .finish_non_exhaustive()
    }
}

impl<'a> OpenEntry<'a> {
    pub fn entry_id(&self) -> i64 {
        self.entry_id
    }

    pub fn created_at(&self) -> NaiveDateTime {
        self.created_at
    }

    /// Sets what the entry does to its payer wallet's spend (known to the
    /// caller only once the entry is open: its periods are those of
    /// [`OpenEntry::created_at`]).
    pub fn with_spend(self, spend: Option<Spend>) -> Self {
        OpenEntry { spend, ..self }
    }

    /// Writes `row` (an `INSERT` of a row that refers to the entry) with the
    /// entry's postings; see [`Attached`].
    pub fn attach(&mut self, row: Attached<'a>) {
        self.attached.push(row);
    }

    /// Applies the legs to the cached balances (guarded), then writes all
    /// postings in one statement; on PostgreSQL the balance updates, the
    /// journal row, the first grant's draw, the attached rows and the
    /// postings are all one statement ([`PostAll`]).
    ///
    /// A refusal (an `Err`) may leave rows of the entry written: like any
    /// error here, it must roll back the caller's transaction (or savepoint).
    pub fn post(self, tx: &mut WriteTx<'_>) -> Result<PostedEntry, LedgerError> {
        let conn = tx.conn();
        let OpenEntry { entry_id, created_at, legs, overdraft, grants, spend, journal, attached } = self;
        let mut cached: Vec<&Leg> = legs.iter().filter(|l| l.kind.keeps_cached_balance()).collect();
        cached.sort_by_key(|l| l.account_id);
        // The spend goes with the wallet's leg: its row is written once.
        if let Some(spend) = spend.as_ref().filter(|s| !cached.iter().any(|l| l.account_id == s.wallet)) {
            return Err(LedgerError::Database(diesel::result::Error::QueryBuilderError(
                format!("an entry's spend names wallet {}, which it does not move", spend.wallet).into(),
            )));
        }
        if let Some(leg) = legs
            .iter()
            .find(|l| l.kind == AccountKind::Wallet && !l.amount.is_zero() && matches!(grants, Grants::None))
        {
            return Err(LedgerError::Database(diesel::result::Error::QueryBuilderError(
                format!("an entry moving wallet {} must say what it does to its grants", leg.account_id)
                    .into(),
            )));
        }
        // In ascending account id order, so two entries touching the same
        // accounts cannot deadlock on PostgreSQL.
        let updates: Vec<balance::BalanceUpdate<'_>> = cached
            .iter()
            .map(|leg| {
                let spend = spend.as_ref().filter(|s| s.wallet == leg.account_id);
                balance::BalanceUpdate::new(leg, overdraft, spend)
            })
            .collect();
        let mut rows: Vec<PostingValues> = legs
            .iter()
            .map(|leg| PostingValues {
                entry_id,
                account_id: leg.account_id,
                amount: leg.amount.micros(),
                balance_after: None,
                created_at,
            })
            .collect();
        let wallet_legs: Vec<&Leg> =
            legs.iter().filter(|l| l.kind == AccountKind::Wallet && !l.amount.is_zero()).collect();
        let mut moved: Vec<balance::Returned> = Vec::with_capacity(updates.len());
        let (ids, first): (Option<Vec<(i64, i64)>>, FirstDrawn<'_>) = match journal {
            // One statement; the other grant movements after it (they need
            // the balances it moved, and refer to the entry).
            Some(journal) => {
                // Most debits fit in the wallet's first grant: drawn in the
                // statement, after the wallet's row is updated (and locked).
                let first = match wallet_legs.as_slice() {
                    // A debit that must stay covered: the grants hold all
                    // of it whenever its update goes through.
                    [leg] => updates
                        .iter()
                        .position(|u| u.account_id() == leg.account_id && u.covered())
                        .and_then(|wallet| grants::first_draw(leg, entry_id, created_at, &grants, wallet)),
                    _ => None,
                };
                let written: Vec<PostAllRow> = Prepared(PostAll {
                    entry_id,
                    created_at,
                    journal: &journal,
                    updates: &updates,
                    draw: first.as_ref(),
                    rows: &rows,
                    attached: &attached,
                })
                .load(conn)?;
                // Refused: the first update (by account id) that moved no
                // row says why; the ones after it did not run.
                for update in &updates {
                    match written.iter().find(|r| r.account_id == update.account_id()).and_then(|r| r.moved) {
                        Some(returned) => moved.push(returned),
                        None => return Err(update.refusal(conn)?),
                    }
                }
                let drawn = written.first().is_some_and(|r| r.drawn > 0);
                (
                    Some(written.iter().map(|r| (r.posting_id, r.account_id)).collect()),
                    first.map(|f| (f, drawn)),
                )
            }
            None => {
                for update in &updates {
                    match update.run(conn)? {
                        Some(returned) => moved.push(returned),
                        None => return Err(update.refusal(conn)?),
                    }
                }
                (None, None)
            }
        };
        let mut alerts: Vec<(i64, i64, i64, bool)> = Vec::new();
        for returned in moved {
            let m = Moved::from_row(returned)?;
            let account_id = m.account_id;
            for row in rows.iter_mut().filter(|r| r.account_id == account_id) {
                row.balance_after = Some(m.balance);
            }
            if let Some(threshold) = m.low_balance_threshold {
                alerts.push((account_id, m.balance, threshold, m.low_balance_below));
            }
            // A spend (not a refund's or dispute's reversal) that left an
            // auto top-up wallet below its threshold: an order, unless one
            // is open. Read from the row the update moved, so a wallet
            // without auto top-up pays no query for it.
            let leg = legs.iter().find(|l| l.account_id == account_id);
            if m.auto_top_up_below
                && leg.is_some_and(|l| l.kind == AccountKind::Wallet && l.amount.is_negative())
                && overdraft != Overdraft::AllowForReversal
            {
                let id = crate::domain::ids::new_id("ato");
                if db::auto_top_ups::record_open_order(conn, account_id, &id)? {
                    tracing::info!(account_id, order_id = %id, "auto top-up order recorded");
                }
            }
        }
        // Only wallets with a low-balance threshold get here: the others
        // cost no statement.
        for (account_id, balance, threshold, below) in alerts {
            crate::services::events::check_low_balance(tx, account_id, balance, threshold, below)?;
        }
        let conn = tx.conn();
        // The wallet's row is locked now: its grants follow the leg (with
        // the balance after its update).
        let moves: Vec<grants::WalletMove> = wallet_legs
            .iter()
            .map(|leg| grants::WalletMove {
                account_id: leg.account_id,
                amount: leg.amount,
                balance_after: rows
                    .iter()
                    .find(|r| r.account_id == leg.account_id)
                    .and_then(|r| r.balance_after)
                    .map_or(Credits::ZERO, Credits::from_micros),
                entry_id,
                at: created_at,
            })
            .collect();
        match (&first, moves.first()) {
            (Some((first, drawn)), Some(m)) => first.finish(conn, m, *drawn)?,
            _ => {
                for m in &moves {
                    grants::apply(conn, m, &grants)?;
                }
            }
        }
        let ids = match ids {
            Some(ids) => ids,
            None => {
                // SQLite. RETURNING gives no order: match the ids by account
                // (one posting per account and entry, a UNIQUE constraint).
                let ids: Vec<(i64, i64)> = InsertPostings { rows: &rows }.load(conn)?;
                for row in &attached {
                    Written(row.as_ref()).execute(conn)?;
                }
                ids
            }
        };
        let mut posted = Vec::with_capacity(rows.len());
        for row in &rows {
            let posting_id = ids
                .iter()
                .find(|(_, account_id)| *account_id == row.account_id)
                .map(|(id, _)| *id)
                .ok_or(diesel::result::Error::NotFound)?;
            posted.push(PostedLeg {
                account_id: row.account_id,
                posting_id,
                amount: Credits::from_micros(row.amount),
                balance_after: row.balance_after.map(Credits::from_micros),
            });
        }
        Ok(PostedEntry { entry_id, created_at, legs: posted })
    }
}

/// The first grant's draw made by [`PostAll`], and whether it took it
/// whole.
type FirstDrawn<'g> = Option<(grants::FirstDraw<'g>, bool)>;

/// One posting to insert.
#[derive(Debug)]
struct PostingValues {
    entry_id: i64,
    account_id: i64,
    amount: i64,
    balance_after: Option<i64>,
    created_at: NaiveDateTime,
}

/// `INSERT INTO postings ... VALUES (...), (...) RETURNING id, account_id`:
/// an entry's postings in one statement (diesel's batch insert does not go
/// through the multi-backend connection). Its text depends only on the
/// number of rows, so it stays in the prepared-statement cache.
struct InsertPostings<'a> {
    rows: &'a [PostingValues],
}

type Backend = <DbConn as Connection>::Backend;

impl QueryId for InsertPostings<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for InsertPostings<'_> {
    type SqlType = (BigInt, BigInt);
}

impl QueryFragment<Backend> for InsertPostings<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Backend>) -> QueryResult<()> {
        out.push_sql(
            "INSERT INTO postings (entry_id, account_id, amount, balance_after, created_at) VALUES ",
        );
        posting_rows(self.rows, true, out.reborrow())?;
        out.push_sql(" RETURNING id, account_id");
        Ok(())
    }
}

/// The postings as `VALUES` rows: `(entry_id, account_id, amount,
/// [balance_after,] created_at), ...` (without the balance after in
/// [`PostAll`], which takes it from the balance updates).
fn posting_rows<'b>(
    rows: &'b [PostingValues],
    with_balance_after: bool,
    mut out: AstPass<'_, 'b, Backend>,
) -> QueryResult<()> {
    for (i, row) in rows.iter().enumerate() {
        out.push_sql(if i == 0 { "(" } else { ", (" });
        out.push_bind_param::<BigInt, _>(&row.entry_id)?;
        out.push_sql(", ");
        out.push_bind_param::<BigInt, _>(&row.account_id)?;
        out.push_sql(", ");
        out.push_bind_param::<BigInt, _>(&row.amount)?;
        out.push_sql(", ");
        if with_balance_after {
            out.push_bind_param::<Nullable<BigInt>, _>(&row.balance_after)?;
            out.push_sql(", ");
        }
        out.push_bind_param::<Timestamp, _>(&row.created_at)?;
        out.push_sql(")");
    }
    Ok(())
}

impl RunQueryDsl<DbConn> for InsertPostings<'_> {}

/// An entry's whole write on PostgreSQL, one statement:
///
/// ```sql
/// WITH j AS (INSERT INTO journal_entries ...),
///   u0 AS (UPDATE accounts ... RETURNING ...),      -- each cached balance,
///   u1 AS (UPDATE ... AND EXISTS (SELECT 1 FROM u0) ...), -- in id order
///   u AS (SELECT ... FROM u0 UNION ALL SELECT ... FROM u1),
///   [taken AS (UPDATE credit_grants ...), drawn AS (INSERT INTO grant_draws ...),]
///   a0 AS (<attached>), ...
///   p AS (INSERT INTO postings SELECT ... FROM (VALUES ...) v LEFT JOIN u ... RETURNING id, account_id)
/// SELECT p.id, p.account_id, <u's row>, <how many grants the first draw took (0 or 1)>
///   FROM p LEFT JOIN u ON u.id = p.account_id
/// ```
///
/// A posting takes its balance after from its account's update. Each
/// update after the first, and the draw after the wallet's, runs only once
/// the one it follows has updated its row, so rows are locked in id order
/// (the wallet's before its grants') and a refused update (no row in `u`)
/// stops the rest; the postings are still written, and the caller, seeing
/// the refusal, rolls them back with its transaction. Foreign keys are
/// checked at the statement's end, when the journal row is there. The text
/// depends only on the number of postings and updates, their guards,
/// whether it draws and the attached statements, so it stays prepared.
struct PostAll<'s, 'a> {
    entry_id: i64,
    created_at: NaiveDateTime,
    journal: &'s JournalRow,
    updates: &'s [balance::BalanceUpdate<'s>],
    draw: Option<&'s grants::FirstDraw<'s>>,
    rows: &'s [PostingValues],
    attached: &'s [Attached<'a>],
}

/// A row of [`PostAll`]: a posting, its account's update (`None`: the
/// account keeps no cached balance, or its update was refused or did not
/// run) and what the first draw took.
struct PostAllRow {
    posting_id: i64,
    account_id: i64,
    moved: Option<balance::Returned>,
    drawn: i64,
}

impl Queryable<PostAllSql, Backend> for PostAllRow {
    type Row = (i64, i64, Option<balance::Returned>, i64);

    fn build((posting_id, account_id, moved, drawn): Self::Row) -> diesel::deserialize::Result<Self> {
        Ok(PostAllRow { posting_id, account_id, moved, drawn })
    }
}

type PostAllSql = (BigInt, BigInt, Nullable<balance::ReturnedSql>, BigInt);

impl QueryId for PostAll<'_, '_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for PostAll<'_, '_> {
    type SqlType = PostAllSql;
}

impl QueryFragment<Backend> for PostAll<'_, '_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Backend>) -> QueryResult<()> {
        use diesel::sql_types::Text;
        let j = self.journal;
        out.push_sql(
            "WITH j AS (INSERT INTO journal_entries \
             (id, kind, reverses_entry_id, request_key, actor, memo, metadata, created_at) VALUES (",
        );
        out.push_bind_param::<BigInt, _>(&self.entry_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(j.kind.as_str())?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<BigInt>, _>(&j.reverses)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<Text>, _>(&j.request_key)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<Text>, _>(&j.actor)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<Text>, _>(&j.memo)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&j.metadata)?;
        out.push_sql(", ");
        out.push_bind_param::<Timestamp, _>(&self.created_at)?;
        out.push_sql("))");
        for (i, update) in self.updates.iter().enumerate() {
            out.push_sql(&format!(", u{i} AS ("));
            update.walk_after(i.checked_sub(1), out.reborrow())?;
            out.push_sql(")");
        }
        out.push_sql(", u AS (");
        if self.updates.is_empty() {
            out.push_sql(
                "SELECT CAST(NULL AS BIGINT) AS id, CAST(NULL AS BIGINT) AS balance, \
                 CAST(NULL AS BIGINT) AS low_balance_threshold, FALSE AS low_balance_below, \
                 FALSE AS auto_top_up_enabled, CAST(NULL AS BIGINT) AS auto_top_up_threshold WHERE FALSE",
            );
        }
        for i in 0..self.updates.len() {
            out.push_sql(&format!(
                "{}SELECT {} FROM u{i}",
                if i == 0 { "" } else { " UNION ALL " },
                balance::RETURNING
            ));
        }
        out.push_sql(")");
        if let Some(draw) = self.draw {
            out.push_sql(", ");
            draw.walk_ctes(out.reborrow())?;
        }
        for (i, row) in self.attached.iter().enumerate() {
            out.push_sql(&format!(", a{i} AS ("));
            row.walk_ast(out.reborrow())?;
            out.push_sql(")");
        }
        out.push_sql(
            ", p AS (INSERT INTO postings (entry_id, account_id, amount, balance_after, created_at) \
             SELECT v.entry_id, v.account_id, v.amount, u.balance, v.created_at FROM (VALUES ",
        );
        posting_rows(self.rows, false, out.reborrow())?;
        out.push_sql(
            ") AS v (entry_id, account_id, amount, created_at) LEFT JOIN u ON u.id = v.account_id \
             RETURNING id, account_id) \
             SELECT p.id, p.account_id, u.id, u.balance, u.low_balance_threshold, u.low_balance_below, \
             u.auto_top_up_enabled, u.auto_top_up_threshold, ",
        );
        out.push_sql(if self.draw.is_some() { "(SELECT count(*) FROM drawn)" } else { "CAST(0 AS BIGINT)" });
        out.push_sql(" FROM p LEFT JOIN u ON u.id = p.account_id");
        Ok(())
    }
}

impl RunQueryDsl<DbConn> for PostAll<'_, '_> {}

/// An attached row's statement run on its own (SQLite).
struct Written<'s>(&'s dyn QueryFragment<Backend>);

impl QueryId for Written<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl QueryFragment<Backend> for Written<'_> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Backend>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }
}

impl RunQueryDsl<DbConn> for Written<'_> {}

/// A cached balance after a movement, with the account's low-balance alert
/// state, read in the same statement.
struct Moved {
    account_id: i64,
    balance: i64,
    low_balance_threshold: Option<i64>,
    low_balance_below: bool,
    /// Auto top-up is on and the balance is now below its threshold.
    auto_top_up_below: bool,
}

impl Moved {
    /// What the balance update returned, or an error for an account that
    /// keeps no cached balance.
    fn from_row(row: balance::Returned) -> Result<Self, LedgerError> {
        match row {
            (account_id, Some(balance), low_balance_threshold, low_balance_below, enabled, threshold) => {
                Ok(Moved {
                    account_id,
                    balance,
                    low_balance_threshold,
                    low_balance_below,
                    auto_top_up_below: enabled && threshold.is_some_and(|t| balance < t),
                })
            }
            (account_id, None, ..) => Err(LedgerError::Database(diesel::result::Error::QueryBuilderError(
                format!("account {account_id} keeps no cached balance").into(),
            ))),
        }
    }
}

/// The platform's accounts, created at start-up if missing; their ids never
/// change, so they are loaded once and handed to services.
#[derive(Clone, Copy, Debug)]
pub struct PlatformAccounts {
    pub cash: AccountRef,
    pub infra_revenue: AccountRef,
    pub marketplace_revenue: AccountRef,
    pub subsidy_expense: AccountRef,
    pub bonus_expense: AccountRef,
    pub adjustments: AccountRef,
    pub payouts: AccountRef,
    pub uncollected_expense: AccountRef,
    pub breakage_revenue: AccountRef,
    pub promotional_expense: AccountRef,
    pub refund_expense: AccountRef,
}

impl PlatformAccounts {
    pub fn ensure(tx: &mut WriteTx<'_>) -> QueryResult<Self> {
        let mut get = |kind| ensure_account(tx, OwnerType::Platform, "", kind, None);
        Ok(PlatformAccounts {
            cash: get(AccountKind::Cash)?,
            infra_revenue: get(AccountKind::InfraRevenue)?,
            marketplace_revenue: get(AccountKind::MarketplaceRevenue)?,
            subsidy_expense: get(AccountKind::SubsidyExpense)?,
            bonus_expense: get(AccountKind::BonusExpense)?,
            adjustments: get(AccountKind::Adjustments)?,
            payouts: get(AccountKind::Payouts)?,
            uncollected_expense: get(AccountKind::UncollectedExpense)?,
            breakage_revenue: get(AccountKind::BreakageRevenue)?,
            promotional_expense: get(AccountKind::PromotionalExpense)?,
            refund_expense: get(AccountKind::RefundExpense)?,
        })
    }
}

/// Finds the account of `owner` and `kind`, creating it if missing. Safe
/// under concurrency: a losing concurrent insert (in a savepoint) re-reads.
pub fn ensure_account(
    tx: &mut WriteTx<'_>,
    owner_type: OwnerType,
    owner_id: &str,
    kind: AccountKind,
    public_id: Option<&str>,
) -> QueryResult<AccountRef> {
    let find = |conn: &mut DbConn| {
        db::accounts::account_of(conn, owner_type, owner_id, kind).map(|row| row.map(|a| a.id))
    };
    if let Some(id) = find(tx)? {
        return Ok(AccountRef { id, kind });
    }
    let inserted = tx.savepoint(|sp| {
        diesel::insert_into(accounts::table)
            .values(NewAccount {
                kind,
                owner_type,
                owner_id,
                public_id,
                balance: kind.keeps_cached_balance().then_some(Credits::ZERO),
                frozen: false,
                created_at: db::now(),
            })
            .returning(accounts::id)
            .get_result::<i64>(sp.conn())
    });
    match inserted {
        Ok(id) => Ok(AccountRef { id, kind }),
        Err(e) if db::is_unique_violation(&e) => {
            find(tx)?.map(|id| AccountRef { id, kind }).ok_or(diesel::result::Error::NotFound)
        }
        Err(e) => Err(e),
    }
}

/// The balance of an account: its cached balance, or the sum of its postings
/// (an error if that sum is beyond the range of an amount: see
/// [`sum_of_postings_exact`]).
pub fn balance_of(conn: &mut DbConn, account: AccountRef) -> QueryResult<Credits> {
    if account.kind.keeps_cached_balance() {
        let b: Option<Credits> =
            accounts::table.filter(accounts::id.eq(account.id)).select(accounts::balance).first(conn)?;
        return Ok(b.unwrap_or(Credits::ZERO));
    }
    sum_of_postings(conn, account.id)
}

/// The sum of an account's postings, which must be in the range of an amount.
pub fn sum_of_postings(conn: &mut DbConn, account_id: i64) -> QueryResult<Credits> {
    let sum = sum_of_postings_exact(conn, account_id)?;
    i64::try_from(sum).map(Credits::from_micros).map_err(|_| {
        diesel::result::Error::QueryBuilderError(
            format!("the postings of account {account_id} sum beyond the range of an amount").into(),
        )
    })
}

/// The exact sum of an account's postings, in micro-credits: uncached
/// accounts (platform revenue, pending earnings) may pass the `i64` range.
pub fn sum_of_postings_exact(conn: &mut DbConn, account_id: i64) -> QueryResult<i128> {
    use diesel::dsl::sql;
    let (hi, lo): (i64, i64) = postings::table
        .filter(postings::account_id.eq(account_id))
        .select((sql::<BigInt>(&db::sums::hi("amount")), sql::<BigInt>(&db::sums::lo("amount"))))
        .first(conn)?;
    Ok(db::sums::join(hi, lo))
}
