//! What a phase measured, the CPU it took, and the one-line summary.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::domain::money::Credits;

/// Latencies are recorded in microseconds, up to a minute.
pub fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| anyhow::anyhow!("histogram: {e}"))
}

/// One phase (HTTP or floor) of one run.
pub struct PhaseStats {
    /// Charges that succeeded (201).
    pub ok: u64,
    /// From the common start to the last client's end.
    pub elapsed: Duration,
    /// Latency of every answered request, in microseconds.
    pub latency: Histogram<u64>,
    /// Failures by HTTP status (the status the API would have sent, for
    /// the floor), or `io` when no answer came.
    pub errors: BTreeMap<String, u64>,
    /// The charge ids seen to succeed.
    pub charge_ids: Vec<String>,
    /// `metered`: each charge's wallet and total, as answered.
    pub charged: Vec<(String, Credits)>,
    /// The first few error messages, for the report.
    pub samples: Vec<String>,
}

impl PhaseStats {
    pub fn new() -> anyhow::Result<Self> {
        Ok(PhaseStats {
            ok: 0,
            elapsed: Duration::ZERO,
            latency: new_histogram()?,
            errors: BTreeMap::new(),
            charge_ids: Vec::new(),
            charged: Vec::new(),
            samples: Vec::new(),
        })
    }

    pub fn record_error(&mut self, kind: String, message: impl FnOnce() -> String) {
        *self.errors.entry(kind).or_default() += 1;
        if self.samples.len() < 3 {
            self.samples.push(message());
        }
    }

    /// Adds another client's figures (the elapsed time is the longest).
    pub fn merge(&mut self, other: PhaseStats) -> anyhow::Result<()> {
        self.ok += other.ok;
        self.elapsed = self.elapsed.max(other.elapsed);
        self.latency.add(&other.latency).map_err(|e| anyhow::anyhow!("histogram: {e}"))?;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.charge_ids.extend(other.charge_ids);
        self.charged.extend(other.charged);
        for s in other.samples {
            if self.samples.len() < 3 {
                self.samples.push(s);
            }
        }
        Ok(())
    }

    pub fn per_s(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }

    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latency.is_empty() {
            return 0.0;
        }
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn describe(&self) -> String {
        let errors = if self.errors.is_empty() {
            "none".to_string()
        } else {
            let by: Vec<String> = self.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{} (first: {})", by.join(" "), self.samples.join(" | "))
        };
        format!(
            "{} ok in {:.2} s = {:.1}/s; latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; errors: {}",
            self.ok,
            self.elapsed.as_secs_f64(),
            self.per_s(),
            self.quantile_ms(0.50),
            self.quantile_ms(0.99),
            self.quantile_ms(0.999),
            self.latency.max() as f64 / 1000.0,
            errors
        )
    }
}

/// History paging figures for the summary.
#[derive(Debug, Clone)]
pub struct Paging {
    pub page_size: u32,
    pub deep_page: u64,
    pub first_ms: f64,
    pub deep_ms: f64,
}

/// One mode's figures: what the summary line says.
#[derive(Debug, Clone)]
pub struct Summary {
    pub mode: String,
    pub db: String,
    pub clients: usize,
    /// `--rate`: the messages per second offered (open loop).
    pub rate: Option<f64>,
    pub charges_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub floor_charges_per_s: f64,
    /// `--raw-floor`: the minimal SQL of a charge, in the same minutes.
    pub raw_floor_per_s: Option<f64>,
    pub rss_mb: Option<f64>,
    pub errors: u64,
    pub verify_ok: bool,
    /// `history`: the spread throughput on the empty database.
    pub baseline_charges_per_s: Option<f64>,
    pub paging: Option<Paging>,
    /// Servers started (`--instances`), and how they reach the database.
    pub instances: usize,
    pub pgbouncer: bool,
    pub replica: bool,
    /// PostgreSQL: the run database's client backends during the HTTP phase.
    pub backends: Option<Backends>,
    /// `--readers`: history pages and exports read beside the HTTP phase.
    pub reads: Option<Reads>,
}

/// PostgreSQL client backends of the run's database, sampled during the
/// measured HTTP phase: all of them, and those running a statement.
#[derive(Debug, Clone, PartialEq)]
pub struct Backends {
    pub samples: usize,
    pub max: i64,
    pub mean: f64,
    pub active_max: i64,
    pub active_mean: f64,
}

impl Backends {
    /// The figures of `(total, active)` samples; `None` without a sample.
    pub fn of(samples: &[(i64, i64)]) -> Option<Backends> {
        if samples.is_empty() {
            return None;
        }
        let n = samples.len() as f64;
        Some(Backends {
            samples: samples.len(),
            max: samples.iter().map(|s| s.0).max().unwrap_or(0),
            mean: samples.iter().map(|s| s.0 as f64).sum::<f64>() / n,
            active_max: samples.iter().map(|s| s.1).max().unwrap_or(0),
            active_mean: samples.iter().map(|s| s.1 as f64).sum::<f64>() / n,
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "postgres client backends: max {}, mean {:.1}; active max {}, mean {:.1} ({} samples)",
            self.max, self.mean, self.active_max, self.active_mean, self.samples
        )
    }
}

/// `--readers`: what the readers read beside the HTTP phase (history
/// pages and CSV exports together).
#[derive(Debug, Clone, PartialEq)]
pub struct Reads {
    pub readers: usize,
    pub per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

/// `bench mode=spread db=postgres c=64 charges_per_s=... p50_ms=... p99_ms=...
/// p999_ms=... floor_charges_per_s=... floor_ratio=... rss_mb=... errors=0
/// verify=ok instances=1 pgbouncer=off replica=off`, then on PostgreSQL
/// `backends_max=... backends_mean=... active_max=... active_mean=...`,
/// with `--readers`: `readers=... reads_per_s=... read_p50_ms=...
/// read_p99_ms=... read_errors=...`, and for `history`:
/// `baseline_charges_per_s=... vs_baseline=... page_size=... page1_ms=...
/// page10000_ms=...`.
pub fn summary_line(s: &Summary) -> String {
    let ratio = if s.floor_charges_per_s > 0.0 { s.charges_per_s / s.floor_charges_per_s } else { 0.0 };
    let rss = s.rss_mb.map(|m| format!("{m:.1}")).unwrap_or_else(|| "na".to_string());
    let mut line = format!(
        "bench mode={} db={} c={} charges_per_s={:.1} p50_ms={:.2} p99_ms={:.2} p999_ms={:.2} \
         floor_charges_per_s={:.1} floor_ratio={:.2} rss_mb={} errors={} verify={}",
        s.mode,
        s.db,
        s.clients,
        s.charges_per_s,
        s.p50_ms,
        s.p99_ms,
        s.p999_ms,
        s.floor_charges_per_s,
        ratio,
        rss,
        s.errors,
        if s.verify_ok { "ok" } else { "failed" }
    );
    let on_off = |b: bool| if b { "on" } else { "off" };
    line.push_str(&format!(
        " instances={} pgbouncer={} replica={}",
        s.instances,
        on_off(s.pgbouncer),
        on_off(s.replica)
    ));
    if let Some(b) = &s.backends {
        line.push_str(&format!(
            " backends_max={} backends_mean={:.1} active_max={} active_mean={:.1}",
            b.max, b.mean, b.active_max, b.active_mean
        ));
    }
    if let Some(r) = &s.reads {
        line.push_str(&format!(
            " readers={} reads_per_s={:.1} read_p50_ms={:.2} read_p99_ms={:.2} read_errors={}",
            r.readers, r.per_s, r.p50_ms, r.p99_ms, r.errors
        ));
    }
    if let Some(rate) = s.rate {
        line.push_str(&format!(" rate={rate:.1}"));
    }
    if let Some(raw) = s.raw_floor_per_s {
        let ratio = if raw > 0.0 { s.charges_per_s / raw } else { 0.0 };
        line.push_str(&format!(" raw_floor_per_s={raw:.1} raw_ratio={ratio:.2}"));
    }
    if let Some(base) = s.baseline_charges_per_s {
        let vs = if base > 0.0 { s.charges_per_s / base } else { 0.0 };
        line.push_str(&format!(" baseline_charges_per_s={base:.1} vs_baseline={vs:.2}"));
    }
    if let Some(p) = &s.paging {
        line.push_str(&format!(
            " page_size={} page1_ms={:.2} page{}_ms={:.2}",
            p.page_size, p.first_ms, p.deep_page, p.deep_ms
        ));
    }
    line
}

/// CPU time of the machine, this process, the servers, PostgreSQL and
/// PgBouncer over a phase, from /proc (Linux; zeros elsewhere). Clock ticks
/// are taken as 100 per second.
pub struct CpuMeter {
    server_pids: Vec<u32>,
    machine: (u64, u64),
    own: u64,
    server: u64,
    postgres: HashMap<u32, u64>,
    pgbouncer: HashMap<u32, u64>,
}

/// CPU used during a phase, in clock ticks.
pub struct CpuUse {
    busy: u64,
    total: u64,
    own: u64,
    server: u64,
    postgres: u64,
    pgbouncer: u64,
}

const TICKS_PER_S: f64 = 100.0;

fn servers_ticks(pids: &[u32]) -> u64 {
    pids.iter().map(|p| process_ticks(&p.to_string())).sum()
}

/// Ticks used since `before` by the processes named so; processes started
/// since count from zero, those that ended are missed.
fn ticks_since(name: &str, before: &HashMap<u32, u64>) -> u64 {
    ticks_of_named(name)
        .into_iter()
        .map(|(pid, t)| t.saturating_sub(before.get(&pid).copied().unwrap_or(0)))
        .sum()
}

impl CpuMeter {
    pub fn start(server_pids: &[u32]) -> Self {
        CpuMeter {
            server_pids: server_pids.to_vec(),
            machine: machine_ticks(),
            own: process_ticks("self"),
            server: servers_ticks(server_pids),
            postgres: ticks_of_named("postgres"),
            pgbouncer: ticks_of_named("pgbouncer"),
        }
    }

    pub fn stop(self) -> CpuUse {
        let (busy, total) = machine_ticks();
        CpuUse {
            busy: busy.saturating_sub(self.machine.0),
            total: total.saturating_sub(self.machine.1),
            own: process_ticks("self").saturating_sub(self.own),
            server: servers_ticks(&self.server_pids).saturating_sub(self.server),
            postgres: ticks_since("postgres", &self.postgres),
            pgbouncer: ticks_since("pgbouncer", &self.pgbouncer),
        }
    }
}

impl CpuUse {
    /// Cores busy on the whole machine.
    pub fn busy_cores(&self, elapsed: Duration) -> f64 {
        self.busy as f64 / TICKS_PER_S / elapsed.as_secs_f64().max(1e-9)
    }

    /// In cores: what the bench, the servers (all instances together),
    /// PostgreSQL (a local server's processes), PgBouncer (when it used any)
    /// and everything else (the kernel, other programs) used.
    pub fn describe(&self, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let cores = |ticks: u64| ticks as f64 / TICKS_PER_S / secs;
        let busy_pct = if self.total > 0 { 100.0 * self.busy as f64 / self.total as f64 } else { 0.0 };
        let other = self.busy.saturating_sub(self.own + self.server + self.postgres + self.pgbouncer);
        let bouncer = if self.pgbouncer > 0 {
            format!(", pgbouncer {:.2}", cores(self.pgbouncer))
        } else {
            String::new()
        };
        format!(
            "cpu: machine {busy_pct:.0}% busy; in cores: bench {:.2}, server {:.2}, postgres {:.2}{bouncer}, other {:.2}",
            cores(self.own),
            cores(self.server),
            cores(self.postgres),
            cores(other)
        )
    }
}

/// (busy, total) ticks of all CPUs from /proc/stat.
fn machine_ticks() -> (u64, u64) {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return (0, 0);
    };
    let Some(line) = text.lines().next() else {
        return (0, 0);
    };
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// utime + stime of every local process with this command name, by pid.
fn ticks_of_named(name: &str) -> HashMap<u32, u64> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if stat.split_once('(').and_then(|(_, r)| r.split_once(')')).is_some_and(|(comm, _)| comm == name) {
            if let Some(t) = parse_process_ticks(&stat) {
                out.insert(pid, t);
            }
        }
    }
    out
}

/// utime + stime of a process (all its threads), from /proc/<pid>/stat.
fn process_ticks(pid: &str) -> u64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    parse_process_ticks(&text).unwrap_or(0)
}

fn parse_process_ticks(stat: &str) -> Option<u64> {
    // The command name may hold spaces: fields count from after its ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `VmHWM` (peak resident set) of /proc/<pid>/status text, in MB.
pub fn parse_vm_hwm_mb(status: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// A tiny deterministic generator (PCG-style LCG) for picking payers.
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        let mut l = Lcg(seed ^ 0x9E37_79B9_7F4A_7C15);
        l.next_u64();
        l
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> Summary {
        Summary {
            mode: "spread".into(),
            db: "postgres".into(),
            clients: 64,
            rate: None,
            charges_per_s: 1234.56,
            p50_ms: 1.234,
            p99_ms: 9.876,
            p999_ms: 15.0,
            floor_charges_per_s: 1500.0,
            raw_floor_per_s: None,
            rss_mb: Some(42.25),
            errors: 0,
            verify_ok: true,
            baseline_charges_per_s: None,
            paging: None,
            instances: 1,
            pgbouncer: false,
            replica: false,
            backends: None,
            reads: None,
        }
    }

    #[test]
    fn the_summary_line_is_key_value_pairs() {
        let line = summary_line(&summary());
        assert_eq!(
            line,
            "bench mode=spread db=postgres c=64 charges_per_s=1234.6 p50_ms=1.23 p99_ms=9.88 \
             p999_ms=15.00 floor_charges_per_s=1500.0 floor_ratio=0.82 rss_mb=42.2 errors=0 verify=ok \
             instances=1 pgbouncer=off replica=off"
        );
        let pairs: Vec<(&str, &str)> = line.split(' ').skip(1).filter_map(|kv| kv.split_once('=')).collect();
        assert_eq!(pairs.len(), 15);
    }

    #[test]
    fn the_raw_floor_adds_its_rate_and_the_ratio() {
        let line = summary_line(&Summary { raw_floor_per_s: Some(2469.12), ..summary() });
        assert!(line.ends_with(" replica=off raw_floor_per_s=2469.1 raw_ratio=0.50"), "{line}");
    }

    #[test]
    fn an_open_loop_run_says_its_rate() {
        let line = summary_line(&Summary { rate: Some(200.0), ..summary() });
        assert!(
            line.ends_with(" errors=0 verify=ok instances=1 pgbouncer=off replica=off rate=200.0"),
            "{line}"
        );
    }

    #[test]
    fn backends_are_the_max_and_mean_of_their_samples() {
        assert_eq!(Backends::of(&[]), None);
        let b = Backends::of(&[(16, 3), (18, 9), (17, 0), (17, 4)]).unwrap();
        assert_eq!(b, Backends { samples: 4, max: 18, mean: 17.0, active_max: 9, active_mean: 4.0 });
        assert_eq!(
            b.describe(),
            "postgres client backends: max 18, mean 17.0; active max 9, mean 4.0 (4 samples)"
        );
    }

    #[test]
    fn several_instances_through_pgbouncer_with_readers_say_so() {
        let s = Summary {
            instances: 4,
            pgbouncer: true,
            replica: true,
            backends: Backends::of(&[(8, 5), (8, 6), (7, 2)]),
            reads: Some(Reads { readers: 8, per_s: 123.456, p50_ms: 4.321, p99_ms: 25.0, errors: 2 }),
            ..summary()
        };
        let line = summary_line(&s);
        assert!(
            line.ends_with(
                " errors=0 verify=ok instances=4 pgbouncer=on replica=on backends_max=8 backends_mean=7.7 \
                 active_max=6 active_mean=4.3 readers=8 reads_per_s=123.5 read_p50_ms=4.32 read_p99_ms=25.00 \
                 read_errors=2"
            ),
            "{line}"
        );
        let pairs: Vec<(&str, &str)> = line.split(' ').skip(1).filter_map(|kv| kv.split_once('=')).collect();
        assert_eq!(pairs.len(), 24);
    }

    #[test]
    fn history_adds_baseline_and_pages() {
        let mut s = summary();
        s.mode = "history".into();
        s.rss_mb = None;
        s.verify_ok = false;
        s.baseline_charges_per_s = Some(1300.0);
        s.paging = Some(Paging { page_size: 100, deep_page: 10_000, first_ms: 1.5, deep_ms: 1.6 });
        let line = summary_line(&s);
        assert!(line.contains(" rss_mb=na "), "{line}");
        assert!(line.contains(" verify=failed "), "{line}");
        assert!(
            line.ends_with(
                "baseline_charges_per_s=1300.0 vs_baseline=0.95 page_size=100 page1_ms=1.50 page10000_ms=1.60"
            ),
            "{line}"
        );
    }

    #[test]
    fn proc_files_parse() {
        let stat = "1234 (tally serve) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 8 0";
        assert_eq!(parse_process_ticks(stat), Some(300));
        let status = "Name:\ttally\nVmPeak:\t  200000 kB\nVmHWM:\t   51200 kB\nVmRSS:\t 40000 kB\n";
        assert_eq!(parse_vm_hwm_mb(status), Some(50.0));
        assert_eq!(parse_vm_hwm_mb("Name: x\n"), None);
    }

    #[test]
    fn the_generator_stays_in_range_and_spreads() {
        let mut g = Lcg::new(7);
        let mut hits = [0u32; 10];
        for _ in 0..10_000 {
            hits[g.below(10)] += 1;
        }
        assert!(hits.iter().all(|&h| (800..1200).contains(&h)), "{hits:?}");
        assert_ne!(Lcg::new(1).next_u64(), Lcg::new(2).next_u64());
    }
}
