//! The end of a mode: `ledger verify`, and every charge seen to succeed
//! looked up: it is in the charges table, its journal entry exists, no two
//! charges share an entry, and the table grew by exactly the successes.
//! `metered` also checks each payer's wallet exactly: its balance is what it
//! was funded with minus the totals of the charges answered to it, and
//! nothing is held any more.

use std::collections::{BTreeMap, HashSet};

use anyhow::{anyhow, Result};
use diesel::prelude::*;

use super::provision::Plan;
use super::report::PhaseStats;
use crate::db::schema::{charges, journal_entries};
use crate::db::Pool;
use crate::domain::kinds::{AccountKind, OwnerType};
use crate::domain::money::Credits;
use crate::ledger::verify::VerifyReport;
use crate::ledger::AccountRef;

/// Charge ids seen to succeed, over the phases of a mode.
#[derive(Default)]
pub struct Seen {
    ids: Vec<String>,
    http: u64,
    floor: u64,
    /// `metered`: the totals answered, summed per wallet (`None`: overflow).
    charged: BTreeMap<String, Option<Credits>>,
}

impl Seen {
    pub fn add(&mut self, phase: &PhaseStats, source: &str) {
        if source == "http" {
            self.http += phase.ok;
        } else {
            self.floor += phase.ok;
        }
        self.ids.extend(phase.charge_ids.iter().cloned());
        for (wallet, total) in &phase.charged {
            let sum = self.charged.entry(wallet.clone()).or_insert(Some(Credits::ZERO));
            *sum = sum.and_then(|s| s.checked_add(*total));
        }
    }
}

pub fn charge_count(pool: &Pool) -> Result<i64> {
    let mut conn = pool.get()?;
    Ok(charges::table.count().get_result(&mut conn)?)
}

pub struct Verdict {
    report: VerifyReport,
    seen: usize,
    distinct: usize,
    found: usize,
    entries: usize,
    delta: i64,
    http: u64,
    floor: u64,
    balances: Option<Balances>,
}

/// `metered`: the payers' wallets checked against the charges answered.
pub struct Balances {
    wallets: usize,
    exact: usize,
    /// The first few wallets that are not exact, and why.
    wrong: Vec<String>,
}

/// Why a wallet's figures are not those expected, if they are not: its
/// balance (available plus held) must be `funded` minus `charged`, and
/// nothing held.
pub fn balance_mismatch(
    funded: Credits,
    charged: Credits,
    available: Credits,
    held: Credits,
) -> Option<String> {
    let Some(expected) = funded.checked_sub(charged) else {
        return Some(format!("funded {funded} minus charged {charged} overflows"));
    };
    let balance = available.checked_add(held);
    if balance == Some(expected) && held.is_zero() {
        return None;
    }
    let balance = balance.map(|b| b.to_string()).unwrap_or_else(|| "overflow".into());
    Some(format!(
        "balance {balance} (held {held}), expected {expected} = funded {funded} - charged {charged} (held 0)"
    ))
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.report.ok
            && self.distinct == self.seen
            && self.found == self.seen
            && self.entries == self.seen
            && self.delta == (self.http + self.floor) as i64
            && self.balances.as_ref().is_none_or(|b| b.exact == b.wallets)
    }

    pub fn describe(&self) -> String {
        let ledger = if self.report.ok {
            format!(
                "ledger verify ok ({} entries, {} postings, sum {})",
                self.report.entries, self.report.postings, self.report.ledger_sum
            )
        } else {
            let first: Vec<String> =
                self.report.breaches.iter().take(3).map(|b| format!("{}: {}", b.check, b.detail)).collect();
            format!("ledger verify FAILED: {} breach(es): {}", self.report.breaches.len(), first.join("; "))
        };
        let balances = match &self.balances {
            None => String::new(),
            Some(b) if b.wrong.is_empty() => {
                format!("; payer balances exact {}/{}, held 0", b.exact, b.wallets)
            }
            Some(b) => {
                format!("; payer balances exact {}/{} (first: {})", b.exact, b.wallets, b.wrong.join("; "))
            }
        };
        format!(
            "{ledger}; charges seen ok {} ({} distinct), in the charges table {}, with their own journal entry {}; \
             table grew by {} = http {} + floor {}{balances}: {}",
            self.seen,
            self.distinct,
            self.found,
            self.entries,
            self.delta,
            self.http,
            self.floor,
            if self.ok() { "ok" } else { "MISMATCH" }
        )
    }
}

/// Every payer's wallet against what it was funded with and charged.
fn check_balances(
    conn: &mut crate::db::DbConn,
    seen: &Seen,
    plan: &Plan,
    funded: Credits,
) -> Result<Balances> {
    let mut out = Balances { wallets: 0, exact: 0, wrong: Vec::new() };
    for payer in &plan.payers {
        let wallet =
            crate::db::accounts::account_of(conn, OwnerType::Person, &payer.user, AccountKind::Wallet)?
                .ok_or_else(|| anyhow!("no wallet for {}", payer.user))?;
        let wallet_id = wallet.public_id.clone().unwrap_or_default();
        let available =
            crate::ledger::balance_of(conn, AccountRef { id: wallet.id, kind: AccountKind::Wallet })?;
        let held =
            match crate::db::accounts::account_of(conn, OwnerType::Person, &payer.user, AccountKind::Held)? {
                Some(a) => crate::ledger::balance_of(conn, AccountRef { id: a.id, kind: AccountKind::Held })?,
                None => Credits::ZERO,
            };
        let charged = seen.charged.get(&wallet_id).copied().unwrap_or(Some(Credits::ZERO));
        out.wallets += 1;
        let wrong = match charged {
            Some(charged) => balance_mismatch(funded, charged, available, held),
            None => Some("the charged totals overflow".to_string()),
        };
        match wrong {
            None => out.exact += 1,
            Some(why) if out.wrong.len() < 3 => out.wrong.push(format!("{wallet_id}: {why}")),
            Some(_) => {}
        }
    }
    Ok(out)
}

pub fn check(pool: &Pool, seen: &Seen, charges_before: i64, plan: &Plan) -> Result<Verdict> {
    let mut conn = pool.get()?;
    let report = crate::ledger::verify::verify(&mut conn).map_err(|e| anyhow!("ledger verify: {e}"))?;
    let distinct: HashSet<&str> = seen.ids.iter().map(String::as_str).collect();
    let mut found = 0usize;
    let mut entry_ids = HashSet::new();
    let ids: Vec<&str> = distinct.iter().copied().collect();
    for chunk in ids.chunks(500) {
        let rows: Vec<(String, i64)> = charges::table
            .inner_join(journal_entries::table.on(journal_entries::id.eq(charges::entry_id)))
            .filter(charges::id.eq_any(chunk))
            .select((charges::id, journal_entries::id))
            .load(&mut conn)?;
        found += rows.len();
        entry_ids.extend(rows.into_iter().map(|(_, e)| e));
    }
    let after: i64 = charges::table.count().get_result(&mut conn)?;
    let balances = match (&plan.metered, plan.funded) {
        (Some(_), Some(funded)) => Some(check_balances(&mut conn, seen, plan, funded)?),
        _ => None,
    };
    Ok(Verdict {
        report,
        seen: seen.ids.len(),
        distinct: distinct.len(),
        found,
        entries: entry_ids.len(),
        delta: after - charges_before,
        http: seen.http,
        floor: seen.floor,
        balances,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(text: &str) -> Credits {
        Credits::parse(text).unwrap()
    }

    #[test]
    fn a_wallet_is_exact_only_at_funded_minus_charged_with_nothing_held() {
        // 1,000,000 funded, three messages of 0.012027 captured.
        let charged = c("0.036081");
        assert_eq!(balance_mismatch(c("1000000"), charged, c("999999.963919"), c("0")), None);
        // One micro-credit off either way.
        assert!(balance_mismatch(c("1000000"), charged, c("999999.963918"), c("0")).is_some());
        assert!(balance_mismatch(c("1000000"), charged, c("999999.96392"), c("0")).is_some());
        // The right balance, but part of it still held (a hold never captured).
        let wrong = balance_mismatch(c("1000000"), charged, c("999999.949775"), c("0.014144")).unwrap();
        assert_eq!(
            wrong,
            "balance 999999.963919 (held 0.014144), expected 999999.963919 = funded 1000000 - charged 0.036081 (held 0)"
        );
    }
}
