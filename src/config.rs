//! Typed settings from environment variables (SPEC 12), over an optional
//! `tally.toml` with the same keys, validated once at start.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rust_decimal::Decimal;

use crate::db::DbTarget;
use crate::domain::{CreditRate, Credits, UsdCents};

/// Every key tally reads, with its default where it has one.
pub const KEYS: &[(&str, Option<&str>)] = &[
    ("DATABASE_URL", Some("sqlite://tally.db")),
    ("TALLY_BIND", Some("127.0.0.1:8080")),
    ("TALLY_JWT_SECRET", None),
    ("TALLY_JWT_PUBLIC_KEY", None),
    ("TALLY_JWT_ISSUER", None),
    ("TALLY_JWT_AUDIENCE", None),
    ("TALLY_CREDIT_USD", Some("0.10")),
    ("TALLY_MARKETPLACE_SHARE", Some("0.30")),
    ("TALLY_EARNINGS_HOLD", Some("24h")),
    ("TALLY_MIN_WITHDRAWAL", Some("100")),
    ("TALLY_MAX_FREE_MESSAGES", Some("100")),
    ("TALLY_DB_POOL_SIZE", Some("16")),
    ("TALLY_SQLITE_SYNCHRONOUS", Some("FULL")),
    ("TALLY_IDEMPOTENCY_TTL", Some("24h")),
    ("TALLY_SETTLEMENT_SWEEP", Some("5s")),
    ("TALLY_IDEMPOTENCY_LEASE", Some("30s")),
    ("TALLY_WORKERS", None),
    ("TALLY_LOG_FORMAT", Some("text")),
    ("TALLY_CREDIT_PACKS", None),
    ("TALLY_CHECKOUT_SUCCESS_URL", Some("http://localhost:3000/billing/success")),
    ("TALLY_CHECKOUT_CANCEL_URL", Some("http://localhost:3000/billing/cancel")),
    ("TALLY_CONNECT_RETURN_URL", Some("http://localhost:3000/creator/payouts")),
    ("TALLY_CONNECT_REFRESH_URL", Some("http://localhost:3000/creator/payouts/refresh")),
    ("TALLY_PLANS", None),
    ("TALLY_PRO_PRICE_ID", None),
    ("TALLY_PAST_DUE_GRACE", Some("7d")),
    ("STRIPE_SECRET_KEY", None),
    ("STRIPE_WEBHOOK_SECRET", None),
    ("STRIPE_API_BASE", None),
];

/// A configuration problem, said in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

/// How JWTs are verified.
#[derive(Clone, Debug, Default)]
pub struct JwtSettings {
    /// HS256 shared secret.
    pub secret: Option<String>,
    /// PEM text of an RS256 or ES256 public key.
    pub public_key_pem: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// A credit pack on sale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreditPack {
    pub id: String,
    pub name: String,
    pub credits: Credits,
    /// Extra credits, funded by the platform's `bonus_expense`.
    pub bonus_credits: Credits,
    pub price: UsdCents,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PackConfig {
    id: String,
    name: String,
    credits: String,
    price_usd: String,
    #[serde(default)]
    bonus_credits: Option<String>,
}

/// Starter 50 / $5, Standard 150 / $15, Pro 500 / $50.
pub fn default_packs() -> Vec<CreditPack> {
    [("starter", "Starter", 50, 500), ("standard", "Standard", 150, 1500), ("pro", "Pro", 500, 5000)]
        .into_iter()
        .map(|(id, name, credits, cents)| CreditPack {
            id: id.into(),
            name: name.into(),
            credits: Credits::whole(credits),
            bonus_credits: Credits::ZERO,
            price: UsdCents::new(cents),
        })
        .collect()
}

/// Reads `TALLY_CREDIT_PACKS`: a JSON array of
/// `{"id", "name", "credits", "price_usd", "bonus_credits"?}` (amounts as strings).
pub fn parse_packs(text: &str) -> Result<Vec<CreditPack>, String> {
    let raw: Vec<PackConfig> =
        serde_json::from_str(text).map_err(|e| format!("not a JSON array of packs: {e}"))?;
    if raw.is_empty() {
        return Err("no packs".into());
    }
    let mut packs = Vec::new();
    for p in raw {
        let credits =
            Credits::parse_positive(&p.credits).map_err(|e| format!("pack {}: credits {e}", p.id))?;
        let bonus = match &p.bonus_credits {
            Some(b) => Credits::parse(b)
                .ok()
                .filter(|b| !b.is_negative())
                .ok_or_else(|| format!("pack {}: bonus_credits '{b}' is not credits", p.id))?,
            None => Credits::ZERO,
        };
        let price =
            UsdCents::parse_positive(&p.price_usd).map_err(|e| format!("pack {}: price_usd {e}", p.id))?;
        if p.id.is_empty() || !p.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(format!("pack id '{}' must be letters, digits, '-' or '_'", p.id));
        }
        if packs.iter().any(|q: &CreditPack| q.id == p.id) {
            return Err(format!("pack id '{}' appears twice", p.id));
        }
        packs.push(CreditPack { id: p.id, name: p.name, credits, bonus_credits: bonus, price });
    }
    Ok(packs)
}

#[derive(Clone, Debug)]
pub struct StripeSettings {
    pub secret_key: String,
    pub webhook_secret: Option<String>,
    pub api_base: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub database: DbTarget,
    pub bind: String,
    pub jwt: JwtSettings,
    pub credit_rate: CreditRate,
    pub marketplace_share: Decimal,
    pub earnings_hold: Duration,
    pub min_withdrawal: Credits,
    /// The most free messages per person an agent may give (on public agents only).
    pub max_free_messages: i32,
    pub pool_size: u32,
    pub sqlite_synchronous_full: bool,
    pub idempotency_ttl: Duration,
    /// How long a request holds its idempotency key before a retry may take
    /// it over (after a crash).
    pub idempotency_lease: Duration,
    /// How often each instance sweeps for earnings to settle.
    pub settlement_sweep: Duration,
    pub workers: Option<usize>,
    pub log_json: bool,
    pub credit_packs: Vec<CreditPack>,
    pub checkout_success_url: String,
    pub checkout_cancel_url: String,
    /// The plans and what each allows.
    pub plans: Vec<crate::domain::plans::Plan>,
    /// The Stripe Price of the Pro subscription.
    pub pro_price_id: Option<String>,
    /// How long a subscription whose payment failed keeps its plan.
    pub past_due_grace: Duration,
    /// Where Stripe sends a creator back after Connect onboarding.
    pub connect_return_url: String,
    /// Where Stripe sends a creator whose onboarding link expired.
    pub connect_refresh_url: String,
    pub stripe: Option<StripeSettings>,
    /// Checks webhook signatures; may be set without a secret key.
    pub stripe_webhook_secret: Option<String>,
}

impl Settings {
    /// Reads `tally.toml` (or the file named by `TALLY_CONFIG`) if present,
    /// then the environment, which wins.
    pub fn load() -> Result<Self, ConfigError> {
        let mut values = BTreeMap::new();
        let file = std::env::var("TALLY_CONFIG").ok();
        let path = file.clone().unwrap_or_else(|| "tally.toml".to_string());
        if Path::new(&path).exists() {
            values.extend(read_toml(&path)?);
        } else if file.is_some() {
            return Err(ConfigError(format!("TALLY_CONFIG names '{path}', which does not exist")));
        }
        for (key, _) in KEYS {
            if let Ok(v) = std::env::var(key) {
                values.insert(key.to_string(), v);
            }
        }
        Self::from_values(&values)
    }

    /// Builds settings from key/value pairs (defaults fill the rest).
    pub fn from_values(values: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        if let Some(unknown) = values.keys().find(|k| !KEYS.iter().any(|(name, _)| name == k)) {
            return Err(ConfigError(format!("unknown setting '{unknown}'")));
        }
        let get = |key: &str| -> Option<String> {
            values
                .get(key)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .or_else(|| KEYS.iter().find(|(k, _)| *k == key).and_then(|(_, d)| d.map(str::to_string)))
        };
        let bad = |key: &str, why: String| ConfigError(format!("{key}: {why}"));

        let database = DbTarget::parse(&get("DATABASE_URL").unwrap_or_default()).map_err(ConfigError)?;
        let bind = get("TALLY_BIND").unwrap_or_default();
        if bind.parse::<std::net::SocketAddr>().is_err() && !bind.contains(':') {
            return Err(bad("TALLY_BIND", format!("'{bind}' is not HOST:PORT")));
        }

        let public_key_pem = match get("TALLY_JWT_PUBLIC_KEY") {
            Some(path) => Some(
                std::fs::read_to_string(&path)
                    .map_err(|e| bad("TALLY_JWT_PUBLIC_KEY", format!("cannot read '{path}': {e}")))?,
            ),
            None => None,
        };
        let jwt = JwtSettings {
            secret: get("TALLY_JWT_SECRET"),
            public_key_pem,
            issuer: get("TALLY_JWT_ISSUER"),
            audience: get("TALLY_JWT_AUDIENCE"),
        };

        let credit_rate = CreditRate::parse(&get("TALLY_CREDIT_USD").unwrap_or_default())
            .map_err(|e| bad("TALLY_CREDIT_USD", e))?;
        let share_text = get("TALLY_MARKETPLACE_SHARE").unwrap_or_default();
        let marketplace_share: Decimal = share_text
            .parse()
            .ok()
            .filter(|d: &Decimal| *d >= Decimal::ZERO && *d <= Decimal::ONE)
            .ok_or_else(|| {
                bad("TALLY_MARKETPLACE_SHARE", format!("'{share_text}' is not between 0 and 1"))
            })?;
        let earnings_hold = parse_duration("TALLY_EARNINGS_HOLD", &get("TALLY_EARNINGS_HOLD"), YEAR)?;
        let idempotency_ttl = parse_duration("TALLY_IDEMPOTENCY_TTL", &get("TALLY_IDEMPOTENCY_TTL"), YEAR)?;
        if idempotency_ttl < Duration::from_secs(24 * 3600) {
            return Err(bad("TALLY_IDEMPOTENCY_TTL", "must be at least 24h".into()));
        }
        let idempotency_lease = parse_duration(
            "TALLY_IDEMPOTENCY_LEASE",
            &get("TALLY_IDEMPOTENCY_LEASE"),
            Duration::from_secs(3600),
        )?
        .max(Duration::from_secs(1));
        let settlement_sweep = parse_duration(
            "TALLY_SETTLEMENT_SWEEP",
            &get("TALLY_SETTLEMENT_SWEEP"),
            Duration::from_secs(86_400),
        )?
        .max(Duration::from_millis(100));
        let min_text = get("TALLY_MIN_WITHDRAWAL").unwrap_or_default();
        let min_withdrawal = Credits::parse(&min_text)
            .ok()
            .filter(|c| !c.is_negative())
            .ok_or_else(|| bad("TALLY_MIN_WITHDRAWAL", format!("'{min_text}' is not credits")))?;
        let free_text = get("TALLY_MAX_FREE_MESSAGES").unwrap_or_default();
        let max_free_messages = free_text
            .parse::<i32>()
            .ok()
            .filter(|n| (0..=crate::services::agents::MAX_FREE_MESSAGES).contains(n))
            .ok_or_else(|| {
                bad(
                    "TALLY_MAX_FREE_MESSAGES",
                    format!("'{free_text}' is not 0 to {}", crate::services::agents::MAX_FREE_MESSAGES),
                )
            })?;
        let pool_text = get("TALLY_DB_POOL_SIZE").unwrap_or_default();
        let pool_size = pool_text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=512).contains(n))
            .ok_or_else(|| bad("TALLY_DB_POOL_SIZE", format!("'{pool_text}' is not 1 to 512")))?;
        let sqlite_synchronous_full =
            match get("TALLY_SQLITE_SYNCHRONOUS").unwrap_or_default().to_ascii_uppercase().as_str() {
                "FULL" => true,
                "NORMAL" => false,
                other => {
                    return Err(bad("TALLY_SQLITE_SYNCHRONOUS", format!("'{other}' is not FULL or NORMAL")))
                }
            };
        let workers = match get("TALLY_WORKERS") {
            Some(w) => Some(
                w.parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad("TALLY_WORKERS", format!("'{w}' is not a positive number")))?,
            ),
            None => None,
        };
        let log_json = match get("TALLY_LOG_FORMAT").unwrap_or_default().as_str() {
            "text" => false,
            "json" => true,
            other => return Err(bad("TALLY_LOG_FORMAT", format!("'{other}' is not text or json"))),
        };
        let stripe = get("STRIPE_SECRET_KEY").map(|secret_key| StripeSettings {
            secret_key,
            webhook_secret: get("STRIPE_WEBHOOK_SECRET"),
            api_base: get("STRIPE_API_BASE"),
        });
        let stripe_webhook_secret = get("STRIPE_WEBHOOK_SECRET");
        let credit_packs = match get("TALLY_CREDIT_PACKS") {
            Some(text) => parse_packs(&text).map_err(|e| bad("TALLY_CREDIT_PACKS", e))?,
            None => default_packs(),
        };
        let checkout_success_url = get("TALLY_CHECKOUT_SUCCESS_URL").unwrap_or_default();
        let checkout_cancel_url = get("TALLY_CHECKOUT_CANCEL_URL").unwrap_or_default();
        let connect_return_url = get("TALLY_CONNECT_RETURN_URL").unwrap_or_default();
        let plans = match get("TALLY_PLANS") {
            Some(text) => crate::domain::plans::parse_plans(&text).map_err(|e| bad("TALLY_PLANS", e))?,
            None => crate::domain::plans::default_plans(),
        };
        let pro_price_id = get("TALLY_PRO_PRICE_ID");
        let past_due_grace = parse_duration("TALLY_PAST_DUE_GRACE", &get("TALLY_PAST_DUE_GRACE"), YEAR)?;
        let connect_refresh_url = get("TALLY_CONNECT_REFRESH_URL").unwrap_or_default();

        Ok(Settings {
            database,
            bind,
            jwt,
            credit_rate,
            marketplace_share,
            earnings_hold,
            min_withdrawal,
            max_free_messages,
            pool_size,
            sqlite_synchronous_full,
            idempotency_ttl,
            idempotency_lease,
            settlement_sweep,
            workers,
            log_json,
            credit_packs,
            checkout_success_url,
            checkout_cancel_url,
            connect_return_url,
            connect_refresh_url,
            plans,
            pro_price_id,
            past_due_grace,
            stripe,
            stripe_webhook_secret,
        })
    }

    /// The server verifies tokens, so it needs a secret or a public key.
    pub fn require_jwt(&self) -> Result<(), ConfigError> {
        if self.jwt.secret.is_none() && self.jwt.public_key_pem.is_none() {
            return Err(ConfigError(
                "TALLY_JWT_SECRET is not set (or set TALLY_JWT_PUBLIC_KEY to a PEM file)".into(),
            ));
        }
        Ok(())
    }
}

/// The longest a hold, a key's life or a grace period may be: a longer one
/// is a typo, and one of centuries would pass the calendar (every paid
/// charge would fail computing when its earnings settle).
const YEAR: Duration = Duration::from_secs(365 * 86_400);

/// Reads a duration (`24h`, `0s`, `7d`) of at most `max`.
fn parse_duration(key: &str, value: &Option<String>, max: Duration) -> Result<Duration, ConfigError> {
    let text = value.clone().unwrap_or_default();
    let d = humantime::parse_duration(&text)
        .map_err(|e| ConfigError(format!("{key}: '{text}' is not a duration like 24h or 0s ({e})")))?;
    if d > max {
        return Err(ConfigError(format!(
            "{key}: '{text}' is too long (at most {})",
            humantime::format_duration(max)
        )));
    }
    Ok(d)
}

fn read_toml(path: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError(format!("cannot read {path}: {e}")))?;
    let table: toml::Table =
        text.parse().map_err(|e| ConfigError(format!("{path} is not valid TOML: {e}")))?;
    table
        .into_iter()
        .map(|(k, v)| {
            let s = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => return Err(ConfigError(format!("{path}: '{k}' must be a string, not {other}"))),
            };
            Ok((k, s))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_follow_the_spec() {
        let s = Settings::from_values(&values(&[])).unwrap();
        assert_eq!(s.database, DbTarget::Sqlite("tally.db".into()));
        assert_eq!(s.bind, "127.0.0.1:8080");
        assert_eq!(s.earnings_hold, Duration::from_secs(86_400));
        assert_eq!(s.min_withdrawal, Credits::whole(100));
        assert_eq!(s.max_free_messages, 100);
        assert_eq!(s.marketplace_share.to_string(), "0.30");
        assert!(s.stripe.is_none());
        assert!(s.require_jwt().unwrap_err().0.contains("TALLY_JWT_SECRET"));
    }

    #[test]
    fn packs_default_and_parse() {
        let s = Settings::from_values(&values(&[])).unwrap();
        assert_eq!(s.credit_packs, default_packs());
        assert_eq!(s.credit_packs[1].price.to_string(), "15.00");
        let packs = parse_packs(
            r#"[{"id": "big", "name": "Big", "credits": "1000", "price_usd": "90", "bonus_credits": "100"}]"#,
        )
        .unwrap();
        assert_eq!(packs[0].bonus_credits, Credits::whole(100));
        assert_eq!(packs[0].price.cents(), 9000);
        assert!(parse_packs(r#"[{"id": "x", "name": "X", "credits": "0", "price_usd": "1"}]"#).is_err());
        assert!(parse_packs(r#"[{"id": "x", "name": "X", "credits": "1", "price_usd": "1.001"}]"#).is_err());
        assert!(parse_packs("[]").is_err());
    }

    #[test]
    fn durations_have_upper_bounds() {
        // A hold of centuries would make every paid charge fail on its date.
        for (key, too_long, longest) in [
            ("TALLY_EARNINGS_HOLD", "1000000years", "365d"),
            ("TALLY_EARNINGS_HOLD", "366d", "365d"),
            ("TALLY_IDEMPOTENCY_TTL", "366d", "365d"),
            ("TALLY_IDEMPOTENCY_LEASE", "2h", "1h"),
            ("TALLY_SETTLEMENT_SWEEP", "2d", "1d"),
            ("TALLY_PAST_DUE_GRACE", "366d", "365d"),
        ] {
            let err = Settings::from_values(&values(&[(key, too_long)])).unwrap_err();
            assert!(err.to_string().contains(key) && err.to_string().contains("at most"), "{err}");
            assert!(Settings::from_values(&values(&[(key, longest)])).is_ok(), "{key}={longest}");
        }
    }

    #[test]
    fn bad_values_are_named() {
        let err = Settings::from_values(&values(&[("DATABASE_URL", "mysql://x")])).unwrap_err();
        assert!(err.to_string().contains("DATABASE_URL"), "{err}");
        let err = Settings::from_values(&values(&[("TALLY_MARKETPLACE_SHARE", "1.5")])).unwrap_err();
        assert!(err.to_string().contains("TALLY_MARKETPLACE_SHARE"), "{err}");
        let err = Settings::from_values(&values(&[("TALLY_EARNINGS_HOLD", "soon")])).unwrap_err();
        assert!(err.to_string().contains("TALLY_EARNINGS_HOLD"), "{err}");
        let err = Settings::from_values(&values(&[("TALLY_JWT_SECRETS", "x")])).unwrap_err();
        assert!(err.to_string().contains("unknown setting"), "{err}");
        let err = Settings::from_values(&values(&[("TALLY_MAX_FREE_MESSAGES", "1000001")])).unwrap_err();
        assert!(err.to_string().contains("TALLY_MAX_FREE_MESSAGES"), "{err}");
        let ok = Settings::from_values(&values(&[("TALLY_EARNINGS_HOLD", "0s")])).unwrap();
        assert_eq!(ok.earnings_hold, Duration::ZERO);
    }
}
