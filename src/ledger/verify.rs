//! `ledger verify`: checks every invariant of the ledger (SPEC 2) with plain
//! SQL that both backends run as written, and lists each breach. Sums are
//! exact whatever their size (see `db::sums`): an account that is not
//! cached (platform revenue, pending earnings) may hold more than an `i64`.
#![deny(clippy::arithmetic_side_effects)]

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Text};
use serde::Serialize;
use utoipa::ToSchema;

use crate::db::{self, sums, DbConn};
use crate::domain::{AccountKind, CreditTotal, Credits};

/// At most this many breaches of one check are listed.
const MAX_LISTED: i64 = 100;

/// The result of checking the ledger's invariants.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VerifyReport {
    /// True when no invariant is breached.
    pub ok: bool,
    /// Journal entries checked.
    pub entries: i64,
    /// Postings checked.
    pub postings: i64,
    /// Accounts checked.
    pub accounts: i64,
    /// The sum of every posting in the ledger, in credits (must be "0").
    pub ledger_sum: String,
    /// Each breach found (at most 100 per check).
    pub breaches: Vec<Breach>,
}

/// One breach of an invariant.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Breach {
    /// The invariant of SPEC 2 that is breached (1 to 4).
    pub invariant: u8,
    /// A short name of the check, e.g. `unbalanced_entry`.
    pub check: String,
    /// What was found.
    pub detail: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct EntrySum {
    #[diesel(sql_type = BigInt)]
    entry_id: i64,
    #[diesel(sql_type = BigInt)]
    total_hi: i64,
    #[diesel(sql_type = BigInt)]
    total_lo: i64,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Sum {
    #[diesel(sql_type = BigInt)]
    total_hi: i64,
    #[diesel(sql_type = BigInt)]
    total_lo: i64,
}

#[derive(QueryableByName)]
struct AccountCheck {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    cached: Option<i64>,
    #[diesel(sql_type = BigInt)]
    actual: i64,
}

#[derive(QueryableByName)]
struct AccountSum {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    cached: Option<i64>,
    #[diesel(sql_type = BigInt)]
    actual_hi: i64,
    #[diesel(sql_type = BigInt)]
    actual_lo: i64,
}

#[derive(QueryableByName)]
struct PendingSums {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = BigInt)]
    accrued_hi: i64,
    #[diesel(sql_type = BigInt)]
    accrued_lo: i64,
    #[diesel(sql_type = BigInt)]
    actual_hi: i64,
    #[diesel(sql_type = BigInt)]
    actual_lo: i64,
}

/// Micro-credits, exact at any size, as credits.
fn credits(micros: i128) -> CreditTotal {
    CreditTotal::from_micros(micros)
}

#[derive(QueryableByName)]
struct NegativeAccount {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Bool)]
    frozen: bool,
    #[diesel(sql_type = Bool)]
    reversed: bool,
    #[diesel(sql_type = BigInt)]
    actual_hi: i64,
    #[diesel(sql_type = BigInt)]
    actual_lo: i64,
}

#[derive(QueryableByName)]
struct TakenBack {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = BigInt)]
    credited: i64,
    #[diesel(sql_type = BigInt)]
    net: i64,
}

#[derive(QueryableByName)]
struct DuplicateKey {
    #[diesel(sql_type = Text)]
    request_key: String,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn count(conn: &mut DbConn, sql: &str) -> QueryResult<i64> {
    Ok(diesel::sql_query(sql).get_result::<Count>(conn)?.n)
}

/// The SQL list of the account kinds `rule` picks, e.g. `('wallet', 'held')`:
/// derived from the kinds, so a new kind cannot be forgotten here.
fn kinds_where(rule: fn(AccountKind) -> bool) -> String {
    let names: Vec<String> =
        AccountKind::ALL.into_iter().filter(|k| rule(*k)).map(|k| format!("'{}'", k.as_str())).collect();
    format!("({})", names.join(", "))
}

/// One check of the ledger: adds what it finds to the report.
type Check = fn(&mut DbConn, &mut VerifyReport) -> QueryResult<()>;

/// Every check `verify` runs, by name, in order.
pub const CHECKS: &[(&str, Check)] = &[
    ("entries_balance", entries_balance),
    ("ledger_sums_to_zero", ledger_sums_to_zero),
    ("cached_balances", cached_balances),
    ("pending_earnings_match_accruals", pending_earnings_match_accruals),
    ("no_negative_balances", no_negative_balances),
    ("top_ups_not_over_reversed", top_ups_not_over_reversed),
    ("one_entry_per_request", one_entry_per_request),
    ("held_matches_open_holds", held_matches_open_holds),
    ("grants_match_their_draws", grants_match_their_draws),
    ("wallets_match_their_grants", wallets_match_their_grants),
];

/// Checks every invariant; read-only, on one snapshot of the database.
pub fn verify(conn: &mut DbConn) -> QueryResult<VerifyReport> {
    db::read_tx(conn, |tx| {
        let conn = tx.conn();
        let mut report = VerifyReport {
            ok: false,
            entries: count(conn, "SELECT COUNT(*) AS n FROM journal_entries")?,
            postings: count(conn, "SELECT COUNT(*) AS n FROM postings")?,
            accounts: count(conn, "SELECT COUNT(*) AS n FROM accounts")?,
            ledger_sum: "0".into(),
            breaches: Vec::new(),
        };
        for (_, check) in CHECKS {
            check(conn, &mut report)?;
        }
        report.ok = report.breaches.is_empty();
        Ok(report)
    })
}

/// Invariant 1: every entry balances and has two or more postings.
fn entries_balance(conn: &mut DbConn, report: &mut VerifyReport) -> QueryResult<()> {
    // 1. Every entry balances, has two or more postings; the whole ledger sums to zero.
    let unbalanced: Vec<EntrySum> = diesel::sql_query(format!(
        "SELECT entry_id, {}, COUNT(*) AS n \
         FROM postings GROUP BY entry_id HAVING NOT {} OR COUNT(*) < 2 \
         ORDER BY entry_id LIMIT {MAX_LISTED}",
        sums::select("amount", "total"),
        sums::is_zero("amount"),
    ))
    .load(conn)?;
    for e in unbalanced {
        report.breaches.push(Breach {
            invariant: 1,
            check: "unbalanced_entry".into(),
            detail: format!(
                "entry {} has {} posting(s) summing to {} credits",
                e.entry_id,
                e.n,
                credits(sums::join(e.total_hi, e.total_lo))
            ),
        });
    }
    let empty = count(
        conn,
        "SELECT COUNT(*) AS n FROM journal_entries e \
         WHERE NOT EXISTS (SELECT 1 FROM postings p WHERE p.entry_id = e.id)",
    )?;
    if empty > 0 {
        report.breaches.push(Breach {
            invariant: 1,
            check: "entry_without_postings".into(),
            detail: format!("{empty} entries have no postings"),
        });
    }
    Ok(())
}

/// Invariant 1: the whole ledger sums to zero (its sum is also the report's `ledger_sum`).
fn ledger_sums_to_zero(conn: &mut DbConn, report: &mut VerifyReport) -> QueryResult<()> {
    let total: Sum = diesel::sql_query(format!("SELECT {} FROM postings", sums::select("amount", "total")))
        .get_result(conn)?;
    let ledger_sum = sums::join(total.total_hi, total.total_lo);
    if ledger_sum != 0 {
        report.breaches.push(Breach {
            invariant: 1,
            check: "ledger_not_zero".into(),
            detail: format!("the ledger sums to {} credits", credits(ledger_sum)),
        });
    }
    report.ledger_sum = credits(ledger_sum).to_string();
    Ok(())
}

/// Invariant 2: a cached balance equals the sum of its postings and its last `balance_after`.
fn cached_balances(conn: &mut DbConn, report: &mut VerifyReport) -> QueryResult<()> {
    // 2. Cached balances equal the sum of postings, and the last posting's
    // balance_after equals the cached balance.
    let drifted: Vec<AccountSum> = diesel::sql_query(format!(
        "SELECT a.id, a.kind, a.balance AS cached, {} \
         FROM accounts a LEFT JOIN postings p ON p.account_id = a.id \
         WHERE a.balance IS NOT NULL \
         GROUP BY a.id, a.kind, a.balance \
         HAVING NOT {} \
         ORDER BY a.id LIMIT {MAX_LISTED}",
        sums::select("p.amount", "actual"),
        sums::equals("p.amount", "a.balance"),
    ))
    .load(conn)?;
    for a in drifted {
        report.breaches.push(Breach {
            invariant: 2,
            check: "cached_balance_drift".into(),
            detail: format!(
                "account {} ({}) caches {} credits but its postings sum to {}",
                a.id,
                a.kind,
                Credits::from_micros(a.cached.unwrap_or(0)),
                credits(sums::join(a.actual_hi, a.actual_lo))
            ),
        });
    }
    let misconfigured = count(
        conn,
        &format!(
            "SELECT COUNT(*) AS n FROM accounts WHERE \
             (balance IS NULL AND kind IN {cached}) OR \
             (balance IS NOT NULL AND kind NOT IN {cached})",
            cached = kinds_where(AccountKind::keeps_cached_balance)
        ),
    )?;
    if misconfigured > 0 {
        report.breaches.push(Breach {
            invariant: 2,
            check: "cache_policy".into(),
            detail: format!("{misconfigured} accounts keep or lack a cached balance wrongly"),
        });
    }
    let stale_after: Vec<AccountCheck> = diesel::sql_query(format!(
        "SELECT a.id, a.kind, a.balance AS cached, COALESCE(p.balance_after, 0) AS actual \
         FROM accounts a JOIN postings p \
           ON p.id = (SELECT MAX(p2.id) FROM postings p2 WHERE p2.account_id = a.id) \
         WHERE a.balance IS NOT NULL \
           AND (p.balance_after IS NULL OR p.balance_after <> a.balance) \
         ORDER BY a.id LIMIT {MAX_LISTED}"
    ))
    .load(conn)?;
    for a in stale_after {
        report.breaches.push(Breach {
            invariant: 2,
            check: "balance_after_mismatch".into(),
            detail: format!(
                "account {} ({}): last posting shows balance {} but the account has {}",
                a.id,
                a.kind,
                Credits::from_micros(a.actual),
                Credits::from_micros(a.cached.unwrap_or(0))
            ),
        });
    }
    Ok(())
}

/// Invariant 2: pending earnings equal the accruals not yet settled.
fn pending_earnings_match_accruals(conn: &mut DbConn, report: &mut VerifyReport) -> QueryResult<()> {
    // 2. Pending earnings equal the accruals not yet settled.
    // Compared here rather than in SQL: one row per creator organization.
    let pending: Vec<PendingSums> = diesel::sql_query(format!(
        "SELECT a.id, a.kind, \
                (SELECT {} FROM earnings_accruals x \
                 WHERE x.org_id = a.owner_id AND x.settled_at IS NULL) AS accrued_hi, \
                (SELECT {} FROM earnings_accruals x \
                 WHERE x.org_id = a.owner_id AND x.settled_at IS NULL) AS accrued_lo, \
                (SELECT {} FROM postings p WHERE p.account_id = a.id) AS actual_hi, \
                (SELECT {} FROM postings p WHERE p.account_id = a.id) AS actual_lo \
         FROM accounts a WHERE a.kind = 'earnings_pending' ORDER BY a.id",
        sums::hi("x.amount"),
        sums::lo("x.amount"),
        sums::hi("p.amount"),
        sums::lo("p.amount"),
    ))
    .load(conn)?;
    for a in pending
        .into_iter()
        .filter(|a| sums::join(a.accrued_hi, a.accrued_lo) != sums::join(a.actual_hi, a.actual_lo))
        .take(MAX_LISTED.unsigned_abs() as usize)
    {
        report.breaches.push(Breach {
            invariant: 2,
            check: "pending_earnings_drift".into(),
            detail: format!(
                "account {} ({}) holds {} credits but unsettled accruals sum to {}",
                a.id,
                a.kind,
                credits(sums::join(a.actual_hi, a.actual_lo)),
                credits(sums::join(a.accrued_hi, a.accrued_lo))
            ),
        });
    }
    Ok(())
}

/// Invariant 3: no wallet or earnings balance below zero, except a frozen wallet after a refund or dispute.
fn no_negative_balances(conn: &mut DbConn, report: &mut VerifyReport) -> QueryResult<()> {
    // 3. No wallet or earnings balance below zero, except a frozen wallet
    // after a refund or dispute reversal.
    let negative: Vec<NegativeAccount> = diesel::sql_query(format!(
        "SELECT a.id, a.kind, a.frozen, \
                EXISTS (SELECT 1 FROM postings p2 JOIN journal_entries e ON e.id = p2.entry_id \
                        WHERE p2.account_id = a.id AND e.kind IN ('refund', 'dispute')) AS reversed, \
                {} \
         FROM accounts a JOIN postings p ON p.account_id = a.id \
         WHERE a.kind IN {non_negative} \
         GROUP BY a.id, a.kind, a.frozen \
         HAVING {} \
         ORDER BY a.id LIMIT {MAX_LISTED}",
        sums::select("p.amount", "actual"),
        sums::is_negative("p.amount"),
        non_negative = kinds_where(AccountKind::must_stay_non_negative),
    ))
    .load(conn)?;
    for a in negative {
        if a.kind == "wallet" && a.frozen && a.reversed {
            continue;
        }
        report.breaches.push(Breach {
            invariant: 3,
            check: "negative_balance".into(),
            detail: format!(
                "account {} ({}{}) is at {} credits",
                a.id,
                a.kind,
                if a.frozen { ", frozen" } else { "" },
                credits(sums::join(a.actual_hi, a.actual_lo))
            ),
        });
    }
    Ok(())
}

/// Invariant 3: a top-up is never taken back beyond what it credited.
fn top_ups_not_over_reversed(conn: &mut DbConn, report: &mut VerifyReport) -> QueryResult<()> {
    // 3. A top-up is never taken back beyond what it credited (credits +
    // bonus), nor given back beyond what was taken: the wallet postings
    // of the entries reversing its credit (refunds, disputes) and of
    // those reversing a reversal (a dispute won) sum to between
    // -credited and 0.
    let over_reversed: Vec<TakenBack> = diesel::sql_query(format!(
        "SELECT id, credited, net FROM ( \
           SELECT t.id, \
                  (SELECT CAST(COALESCE(SUM(c.amount), 0) AS BIGINT) FROM postings c \
                   WHERE c.entry_id = t.credited_entry_id AND c.account_id = t.wallet_account_id) \
                    AS credited, \
                  (SELECT CAST(COALESCE(SUM(p.amount), 0) AS BIGINT) \
                   FROM postings p JOIN journal_entries e ON e.id = p.entry_id \
                   WHERE p.account_id = t.wallet_account_id \
                     AND (e.reverses_entry_id = t.credited_entry_id \
                          OR e.reverses_entry_id IN (SELECT r.id FROM journal_entries r \
                                                     WHERE r.reverses_entry_id = t.credited_entry_id))) \
                    AS net \
           FROM top_ups t WHERE t.credited_entry_id IS NOT NULL) x \
         WHERE net < -credited OR net > 0 ORDER BY id LIMIT {MAX_LISTED}"
    ))
    .load(conn)?;
    for t in over_reversed {
        report.breaches.push(Breach {
            invariant: 3,
            check: "top_up_over_reversed".into(),
            detail: format!(
                "top-up {} credited {} credits but {} were taken back",
                t.id,
                Credits::from_micros(t.credited),
                Credits::from_micros(t.net.saturating_neg())
            ),
        });
    }
    Ok(())
}

/// Invariant 4: no request (idempotency key) wrote two entries.
fn one_entry_per_request(conn: &mut DbConn, report: &mut VerifyReport) -> QueryResult<()> {
    // 4. One entry per request: no idempotency key names two entries.
    let duplicates: Vec<DuplicateKey> = diesel::sql_query(format!(
        "SELECT request_key, COUNT(*) AS n FROM journal_entries \
         WHERE request_key IS NOT NULL GROUP BY request_key HAVING COUNT(*) > 1 \
         LIMIT {MAX_LISTED}"
    ))
    .load(conn)?;
    for d in duplicates {
        report.breaches.push(Breach {
            invariant: 4,
            check: "duplicate_request".into(),
            detail: format!("request {} wrote {} entries", d.request_key, d.n),
        });
    }
    Ok(())
}

#[derive(QueryableByName)]
struct HeldCheck {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = BigInt)]
    cached: i64,
    #[diesel(sql_type = BigInt)]
    open: i64,
}

/// Invariant 2: each wallet's held account holds exactly what its open holds
/// reserved.
fn held_matches_open_holds(conn: &mut DbConn, report: &mut VerifyReport) -> QueryResult<()> {
    let wrong: Vec<HeldCheck> = diesel::sql_query(format!(
        "SELECT id, cached, open FROM ( \
           SELECT a.id, COALESCE(a.balance, 0) AS cached, \
                  (SELECT CAST(COALESCE(SUM(h.amount), 0) AS BIGINT) FROM holds h \
                   WHERE h.held_account_id = a.id AND h.status = 'open') AS open \
           FROM accounts a WHERE a.kind = 'held') x \
         WHERE cached <> open ORDER BY id LIMIT {MAX_LISTED}"
    ))
    .load(conn)?;
    for h in wrong {
        report.breaches.push(Breach {
            invariant: 2,
            check: "held_not_open_holds".into(),
            detail: format!(
                "held account {} holds {} credits but its open holds reserve {}",
                h.id,
                Credits::from_micros(h.cached),
                Credits::from_micros(h.open)
            ),
        });
    }
    Ok(())
}

#[derive(QueryableByName)]
struct GrantCheck {
    #[diesel(sql_type = Text)]
    public_id: String,
    #[diesel(sql_type = BigInt)]
    amount: i64,
    #[diesel(sql_type = BigInt)]
    remaining: i64,
    #[diesel(sql_type = BigInt)]
    drawn: i64,
}

/// Invariant 2 for grants: a grant's `remaining` is its amount less what
/// its draws took (and gave back).
fn grants_match_their_draws(conn: &mut DbConn, report: &mut VerifyReport) -> QueryResult<()> {
    let wrong: Vec<GrantCheck> = diesel::sql_query(format!(
        "SELECT public_id, amount, remaining, drawn FROM ( \
           SELECT g.public_id, g.amount, g.remaining, \
                  (SELECT CAST(COALESCE(SUM(d.amount), 0) AS BIGINT) FROM grant_draws d \
                   WHERE d.grant_id = g.id) AS drawn \
           FROM credit_grants g) x \
         WHERE remaining <> amount - drawn ORDER BY public_id LIMIT {MAX_LISTED}"
    ))
    .load(conn)?;
    for g in wrong {
        report.breaches.push(Breach {
            invariant: 2,
            check: "grant_not_its_draws".into(),
            detail: format!(
                "grant {} of {} credits has {} remaining but its draws took {}",
                g.public_id,
                Credits::from_micros(g.amount),
                Credits::from_micros(g.remaining),
                Credits::from_micros(g.drawn)
            ),
        });
    }
    Ok(())
}

#[derive(QueryableByName)]
struct WalletGrants {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = BigInt)]
    balance: i64,
    #[diesel(sql_type = BigInt)]
    granted: i64,
}

/// Invariant 2 for grants: a wallet's balance is the sum of its grants'
/// `remaining` (none left when it is below zero).
fn wallets_match_their_grants(conn: &mut DbConn, report: &mut VerifyReport) -> QueryResult<()> {
    let wrong: Vec<WalletGrants> = diesel::sql_query(format!(
        "SELECT id, balance, granted FROM ( \
           SELECT a.id, COALESCE(a.balance, 0) AS balance, \
                  (SELECT CAST(COALESCE(SUM(g.remaining), 0) AS BIGINT) FROM credit_grants g \
                   WHERE g.account_id = a.id) AS granted \
           FROM accounts a WHERE a.kind = 'wallet') x \
         WHERE granted <> CASE WHEN balance < 0 THEN 0 ELSE balance END ORDER BY id LIMIT {MAX_LISTED}"
    ))
    .load(conn)?;
    for w in wrong {
        report.breaches.push(Breach {
            invariant: 2,
            check: "wallet_not_its_grants".into(),
            detail: format!(
                "wallet account {} has a balance of {} but its grants hold {}",
                w.id,
                Credits::from_micros(w.balance),
                Credits::from_micros(w.granted)
            ),
        });
    }
    Ok(())
}
