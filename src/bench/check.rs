//! The end of a mode: `ledger verify`, and every charge seen to succeed
//! looked up: it is in the charges table, its journal entry exists, no two
//! charges share an entry, and the table grew by exactly the successes.

use std::collections::HashSet;

use anyhow::{anyhow, Result};
use diesel::prelude::*;

use super::report::PhaseStats;
use crate::db::schema::{charges, journal_entries};
use crate::db::Pool;
use crate::ledger::verify::VerifyReport;

/// Charge ids seen to succeed, over the phases of a mode.
#[derive(Default)]
pub struct Seen {
    ids: Vec<String>,
    http: u64,
    floor: u64,
}

impl Seen {
    pub fn add(&mut self, phase: &PhaseStats, source: &str) {
        if source == "http" {
            self.http += phase.ok;
        } else {
            self.floor += phase.ok;
        }
        self.ids.extend(phase.charge_ids.iter().cloned());
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
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.report.ok
            && self.distinct == self.seen
            && self.found == self.seen
            && self.entries == self.seen
            && self.delta == (self.http + self.floor) as i64
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
        format!(
            "{ledger}; charges seen ok {} ({} distinct), in the charges table {}, with their own journal entry {}; \
             table grew by {} = http {} + floor {}: {}",
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

pub fn check(pool: &Pool, seen: &Seen, charges_before: i64) -> Result<Verdict> {
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
    Ok(Verdict {
        report,
        seen: seen.ids.len(),
        distinct: distinct.len(),
        found,
        entries: entry_ids.len(),
        delta: after - charges_before,
        http: seen.http,
        floor: seen.floor,
    })
}
