//! Typed settings from environment variables (SPEC 12), over an optional
//! `tally.toml` with the same keys, validated once at start.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rust_decimal::Decimal;

use crate::db::DbTarget;
use crate::domain::{CreditRate, Credits, UsdCents, Validity};

/// Every key tally reads, with its default where it has one.
pub const KEYS: &[(&str, Option<&str>)] = &[
    ("DATABASE_URL", Some("sqlite://tally.db")),
    ("DATABASE_MIGRATION_URL", None),
    ("DATABASE_REPLICA_URL", None),
    ("TALLY_REPLICA_MAX_LAG", Some("5s")),
    ("TALLY_PG_STATEMENT_CACHE", Some("on")),
    ("TALLY_BIND", Some("127.0.0.1:8080")),
    ("TALLY_JWT_SECRET", None),
    ("TALLY_JWT_PUBLIC_KEY", None),
    ("TALLY_JWT_ISSUER", None),
    ("TALLY_JWT_AUDIENCE", None),
    ("TALLY_JWT_JWKS_URL", None),
    ("TALLY_JWT_SUBJECT_CLAIM", Some("sub")),
    ("TALLY_JWT_ROLES_CLAIM", Some("roles")),
    ("TALLY_API_KEY_MODE", Some("live")),
    ("TALLY_CREDIT_USD", Some("0.10")),
    ("TALLY_MARKETPLACE_SHARE", Some("0.30")),
    ("TALLY_EARNINGS_HOLD", Some("24h")),
    ("TALLY_MIN_WITHDRAWAL", Some("100")),
    ("TALLY_MAX_FREE_MESSAGES", Some("100")),
    ("TALLY_DB_POOL_SIZE", Some("16")),
    ("TALLY_MAX_CONCURRENT_EXPORTS", Some("4")),
    ("TALLY_SQLITE_SYNCHRONOUS", Some("FULL")),
    ("TALLY_IDEMPOTENCY_TTL", Some("24h")),
    ("TALLY_TEST_IDEMPOTENCY_TTL", None),
    ("TALLY_SETTLEMENT_SWEEP", Some("5s")),
    ("TALLY_HOLD_MAX", Some("24h")),
    ("TALLY_IDEMPOTENCY_LEASE", Some("30s")),
    ("TALLY_WORKERS", None),
    ("TALLY_LOG_FORMAT", Some("text")),
    ("TALLY_CORS_ORIGINS", None),
    ("TALLY_METRICS_BIND", None),
    ("TALLY_SHUTDOWN_DRAIN", Some("5s")),
    ("TALLY_CREDIT_PACKS", None),
    ("TALLY_CHECKOUT_SUCCESS_URL", Some("http://localhost:3000/billing/success")),
    ("TALLY_CHECKOUT_CANCEL_URL", Some("http://localhost:3000/billing/cancel")),
    ("TALLY_CONNECT_RETURN_URL", Some("http://localhost:3000/creator/payouts")),
    ("TALLY_CONNECT_REFRESH_URL", Some("http://localhost:3000/creator/payouts/refresh")),
    ("TALLY_PLANS", None),
    ("TALLY_PRO_PRICE_ID", None),
    ("TALLY_PAST_DUE_GRACE", Some("7d")),
    ("TALLY_INVOICE_PREFIX", Some("TALLY")),
    ("TALLY_SELLER_NAME", Some("tally")),
    ("TALLY_SELLER_ADDRESS", None),
    ("TALLY_SELLER_TAX_ID", None),
    ("TALLY_TAX_RATES", None),
    ("TALLY_TAX_MODE", Some("inclusive")),
    ("TALLY_WEBHOOKS_ALLOW_PRIVATE", Some("false")),
    ("TALLY_WEBHOOK_RETRY_BASE", Some("5s")),
    ("TALLY_WEBHOOK_POLL", Some("1s")),
    ("TALLY_AUTO_TOP_UP_RECONCILE_AFTER", Some("1h")),
    ("TALLY_GROUP_COMMIT", Some("32")),
    ("STRIPE_SECRET_KEY", None),
    ("STRIPE_WEBHOOK_SECRET", None),
    ("STRIPE_CONNECT_WEBHOOK_SECRET", None),
    ("STRIPE_API_BASE", None),
];

/// A configuration problem, said in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

/// How JWTs are verified.
#[derive(Clone, Debug)]
pub struct JwtSettings {
    /// HS256 shared secret.
    pub secret: Option<String>,
    /// PEM text of an RS256 or ES256 public key.
    pub public_key_pem: Option<String>,
    /// An identity provider's JWKS URL: its public keys, by `kid`.
    pub jwks_url: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// The claim that carries the person's id (`sub`).
    pub subject_claim: String,
    /// The claim that carries the roles (`roles`); a dotted path
    /// (`realm_access.roles`) when no claim has that exact name.
    pub roles_claim: String,
}

impl Default for JwtSettings {
    fn default() -> Self {
        JwtSettings {
            secret: None,
            public_key_pem: None,
            jwks_url: None,
            issuer: None,
            audience: None,
            subject_claim: "sub".into(),
            roles_claim: "roles".into(),
        }
    }
}

/// A credit pack on sale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreditPack {
    pub id: String,
    pub name: String,
    pub credits: Credits,
    /// Extra credits, funded by the platform's `bonus_expense`.
    pub bonus_credits: Credits,
    /// The price of the default validity ([`CreditPack::default_validity`]).
    pub price: UsdCents,
    /// The validities on sale and their prices, shortest first (a pack
    /// configured without `validity`: `lifetime` at `price`).
    pub prices: Vec<(Validity, UsdCents)>,
}

impl CreditPack {
    /// The validity of a top-up that names none: `lifetime` when on sale
    /// (credits that never expire, as before validities existed), else the
    /// longest on sale.
    pub fn default_validity(&self) -> Validity {
        self.prices.last().map_or(Validity::Lifetime, |(v, _)| *v)
    }

    /// The price of the pack at `validity`, if it is on sale.
    pub fn price_of(&self, validity: Validity) -> Option<UsdCents> {
        self.prices.iter().find(|(v, _)| *v == validity).map(|(_, p)| *p)
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PackConfig {
    id: String,
    name: String,
    credits: String,
    #[serde(default)]
    price_usd: Option<String>,
    #[serde(default)]
    bonus_credits: Option<String>,
    /// `{"30d": "5", "90d": "6", "lifetime": "7.5"}`: prices by validity.
    #[serde(default)]
    validity: Option<BTreeMap<String, String>>,
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
            prices: vec![(Validity::Lifetime, UsdCents::new(cents))],
        })
        .collect()
}

/// Reads `TALLY_CREDIT_PACKS`: a JSON array of
/// `{"id", "name", "credits", "price_usd", "bonus_credits"?, "validity"?}`
/// (amounts as strings). With `validity` (`{"30d": "5", "lifetime":
/// "7.5"}`) the pack is sold at those validities and prices, and
/// `price_usd` may be left out; without, it is sold `lifetime` at
/// `price_usd`.
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
        let mut prices = Vec::new();
        for (name, price) in p.validity.iter().flatten() {
            let validity: Validity =
                name.parse().map_err(|e| format!("pack {}: {e} (30d, 90d or lifetime)", p.id))?;
            let price = UsdCents::parse_positive(price)
                .map_err(|e| format!("pack {}: validity {name} price {e}", p.id))?;
            prices.push((validity, price));
        }
        if prices.is_empty() {
            let price_usd =
                p.price_usd.as_deref().ok_or_else(|| format!("pack {}: price_usd is missing", p.id))?;
            let price =
                UsdCents::parse_positive(price_usd).map_err(|e| format!("pack {}: price_usd {e}", p.id))?;
            prices.push((Validity::Lifetime, price));
        } else if let Some(price_usd) = &p.price_usd {
            UsdCents::parse_positive(price_usd).map_err(|e| format!("pack {}: price_usd {e}", p.id))?;
        }
        prices.sort_by_key(|(v, _)| *v);
        let price = prices.last().map(|(_, p)| *p).ok_or_else(|| format!("pack {}: no price", p.id))?;
        if p.id.is_empty() || !p.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(format!("pack id '{}' must be letters, digits, '-' or '_'", p.id));
        }
        if packs.iter().any(|q: &CreditPack| q.id == p.id) {
            return Err(format!("pack id '{}' appears twice", p.id));
        }
        packs.push(CreditPack { id: p.id, name: p.name, credits, bonus_credits: bonus, price, prices });
    }
    Ok(packs)
}

#[derive(Clone, Debug)]
pub struct StripeSettings {
    pub secret_key: String,
    pub webhook_secret: Option<String>,
    pub api_base: Option<String>,
}

/// What invoices say about the seller, how they are numbered, and the tax
/// rate table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invoicing {
    /// `TALLY_INVOICE_PREFIX`: invoice numbers read `PREFIX-2026-000042`.
    pub prefix: String,
    pub seller_name: String,
    /// Lines separated by `\n` or `;`.
    pub seller_address: Option<String>,
    pub seller_tax_id: Option<String>,
    pub tax: crate::domain::tax::TaxTable,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub database: DbTarget,
    /// `DATABASE_MIGRATION_URL`: where migrations run (PostgreSQL only),
    /// straight to the primary when `DATABASE_URL` goes through a pooler;
    /// `None` runs them through `DATABASE_URL`.
    pub migration_database: Option<DbTarget>,
    /// `DATABASE_REPLICA_URL`: a streaming replica of the primary
    /// (PostgreSQL only) that serves history pages, CSV exports, reports
    /// and marketplace listings while it keeps up; `None` reads everything
    /// from the primary.
    pub replica_database: Option<DbTarget>,
    /// `TALLY_REPLICA_MAX_LAG`: the replica answers only while it has
    /// replayed everything the primary had committed this long ago.
    pub replica_max_lag: Duration,
    /// `TALLY_PG_STATEMENT_CACHE`: whether PostgreSQL connections keep
    /// diesel's named prepared statements (off behind a transaction pooler
    /// that does not track them, such as PgBouncer before 1.21).
    pub pg_statement_cache: bool,
    pub bind: String,
    pub jwt: JwtSettings,
    pub credit_rate: CreditRate,
    pub marketplace_share: Decimal,
    pub earnings_hold: Duration,
    pub min_withdrawal: Credits,
    /// The most free messages per person an agent may give (on public agents only).
    pub max_free_messages: i32,
    pub pool_size: u32,
    /// The most CSV exports one instance streams at once (1 to
    /// [`MAX_CONCURRENT_EXPORTS`]); each holds a pooled connection only
    /// while it reads a page, so at most this many connections are busy
    /// with exports at any moment.
    pub max_concurrent_exports: usize,
    pub sqlite_synchronous_full: bool,
    /// How long idempotency keys are kept: at least 24 h, unless set by
    /// `TALLY_TEST_IDEMPOTENCY_TTL` (tests only).
    pub idempotency_ttl: Duration,
    /// How long a request holds its idempotency key before a retry may take
    /// it over (after a crash).
    pub idempotency_lease: Duration,
    /// How often each instance sweeps for earnings to settle (and for
    /// expired holds to release).
    pub settlement_sweep: Duration,
    /// The longest a hold may stay open (`expires_in` at most this).
    pub hold_max: Duration,
    /// How long the server keeps serving, not ready, once shutdown begins.
    pub shutdown_drain: Duration,
    pub workers: Option<usize>,
    pub log_json: bool,
    /// The browser origins allowed to call the API (CORS), each
    /// `scheme://host[:port]` in lower case; none by default.
    pub cors_origins: Vec<String>,
    /// Where `/metrics` is served instead of `bind`, when set.
    pub metrics_bind: Option<String>,
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
    pub invoicing: Invoicing,
    /// Checks webhook signatures; may be set without a secret key.
    pub stripe_webhook_secret: Option<String>,
    /// `STRIPE_CONNECT_WEBHOOK_SECRET`: the signing secret of the Connect
    /// endpoint (events about connected accounts).
    pub stripe_connect_webhook_secret: Option<String>,
    /// `TALLY_API_KEY_MODE=test`: new API keys start `tk_test_` (else `tk_live_`).
    pub api_key_test_mode: bool,
    /// Outbound webhooks.
    pub webhooks: WebhookSettings,
    /// `TALLY_AUTO_TOP_UP_RECONCILE_AFTER`: how long an auto top-up order
    /// may stay `processing` without its webhook before the sweep asks
    /// Stripe for its PaymentIntent.
    pub auto_top_up_reconcile_after: Duration,
    /// `TALLY_GROUP_COMMIT`: the most charges one group commit carries
    /// (`off` or 1: every charge commits alone).
    pub group_commit_max: usize,
}

/// Outbound webhook delivery.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// `TALLY_WEBHOOKS_ALLOW_PRIVATE=true`: endpoint URLs may be http and
    /// may name loopback, private and link-local addresses (tests, local
    /// development); never in production.
    pub allow_private: bool,
    /// `TALLY_WEBHOOK_RETRY_BASE`: the first retry's delay; the later ones
    /// are 60, 360, 1440, 3600 and 7200 times it (5s: 5 s, 5 min, 30 min,
    /// 2 h, 5 h, 10 h, 10 h).
    pub retry_base: Duration,
    /// `TALLY_WEBHOOK_POLL`: how often each instance looks for deliveries
    /// that are due.
    pub poll: Duration,
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

    /// Builds settings from key/value pairs (defaults fill the rest), one
    /// group at a time; the first bad value stops it, named by its key.
    pub fn from_values(values: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let raw = Raw::new(values)?;
        let Database {
            database,
            migration_database,
            replica_database,
            replica_max_lag,
            pg_statement_cache,
            pool_size,
            sqlite_synchronous_full,
        } = raw.database()?;
        let Server { bind, workers, log_json, max_concurrent_exports, cors_origins, metrics_bind } =
            raw.server()?;
        let jwt = raw.jwt()?;
        let Money {
            credit_rate,
            marketplace_share,
            earnings_hold,
            min_withdrawal,
            credit_packs,
            max_free_messages,
        } = raw.money()?;
        let Timings { idempotency_ttl, idempotency_lease, settlement_sweep, hold_max, shutdown_drain } =
            raw.timings()?;
        let Stripe {
            stripe,
            stripe_webhook_secret,
            stripe_connect_webhook_secret,
            checkout_success_url,
            checkout_cancel_url,
            connect_return_url,
            connect_refresh_url,
        } = raw.stripe();
        let Plans { plans, pro_price_id, past_due_grace } = raw.plans()?;
        let api_key_test_mode = match raw.text("TALLY_API_KEY_MODE").as_str() {
            "live" => false,
            "test" => true,
            other => return Err(bad("TALLY_API_KEY_MODE", format!("'{other}' is not live or test"))),
        };
        let invoicing = raw.invoicing()?;
        let webhooks = raw.webhooks()?;
        let auto_top_up_reconcile_after =
            raw.duration("TALLY_AUTO_TOP_UP_RECONCILE_AFTER", Duration::from_secs(7 * 86_400))?;
        let group_commit_max = raw.group_commit()?;

        Ok(Settings {
            database,
            migration_database,
            replica_database,
            replica_max_lag,
            pg_statement_cache,
            bind,
            jwt,
            credit_rate,
            marketplace_share,
            earnings_hold,
            min_withdrawal,
            max_free_messages,
            pool_size,
            max_concurrent_exports,
            sqlite_synchronous_full,
            idempotency_ttl,
            idempotency_lease,
            settlement_sweep,
            hold_max,
            shutdown_drain,
            workers,
            log_json,
            cors_origins,
            metrics_bind,
            credit_packs,
            checkout_success_url,
            checkout_cancel_url,
            connect_return_url,
            connect_refresh_url,
            plans,
            pro_price_id,
            past_due_grace,
            stripe,
            invoicing,
            stripe_webhook_secret,
            stripe_connect_webhook_secret,
            api_key_test_mode,
            webhooks,
            auto_top_up_reconcile_after,
            group_commit_max,
        })
    }

    /// Every secret a Stripe event may be signed with: those of
    /// `STRIPE_WEBHOOK_SECRET` (comma-separated, e.g. during a rotation)
    /// and `STRIPE_CONNECT_WEBHOOK_SECRET` (the Connect endpoint's).
    pub fn webhook_secrets(&self) -> Vec<&str> {
        let listed = self.stripe_webhook_secret.iter().flat_map(|s| s.split(','));
        listed
            .chain(self.stripe_connect_webhook_secret.as_deref())
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// Whether the Stripe key is a live one (`sk_live_`/`rk_live_`) or a test
    /// one (`sk_test_`/`rk_test_`); `None` when there is no key or it says
    /// neither (events are then not checked against a mode).
    pub fn stripe_livemode(&self) -> Option<bool> {
        let key = &self.stripe.as_ref()?.secret_key;
        if key.starts_with("sk_live_") || key.starts_with("rk_live_") {
            Some(true)
        } else if key.starts_with("sk_test_") || key.starts_with("rk_test_") {
            Some(false)
        } else {
            None
        }
    }

    /// The server verifies tokens, so it needs a secret or a public key.
    pub fn require_jwt(&self) -> Result<(), ConfigError> {
        let jwt = &self.jwt;
        if jwt.secret.is_none() && jwt.public_key_pem.is_none() && jwt.jwks_url.is_none() {
            return Err(ConfigError(
                "TALLY_JWT_SECRET is not set (or set TALLY_JWT_PUBLIC_KEY to a PEM file, or TALLY_JWT_JWKS_URL)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// The longest a hold, a key's life or a grace period may be: a longer one
/// is a typo, and one of centuries would pass the calendar (every paid
/// charge would fail computing when its earnings settle).
const YEAR: Duration = Duration::from_secs(365 * 86_400);

/// The highest `TALLY_MAX_CONCURRENT_EXPORTS`: more exports at once than
/// this would only share the same cores and connections more thinly.
pub const MAX_CONCURRENT_EXPORTS: usize = 64;

/// The settings read so far, by key: trimmed, empty as unset, defaults from
/// [`KEYS`] filled in.
struct Raw<'a>(&'a BTreeMap<String, String>);

/// `TALLY_BIND`, `TALLY_WORKERS`, `TALLY_LOG_FORMAT`, `TALLY_MAX_CONCURRENT_EXPORTS`,
/// `TALLY_CORS_ORIGINS`, `TALLY_METRICS_BIND`.
struct Server {
    bind: String,
    workers: Option<usize>,
    log_json: bool,
    max_concurrent_exports: usize,
    cors_origins: Vec<String>,
    metrics_bind: Option<String>,
}

/// A `TALLY_BIND`-like `HOST:PORT`.
fn bind_address(key: &str, text: String) -> Result<String, ConfigError> {
    if text.parse::<std::net::SocketAddr>().is_err() && !text.contains(':') {
        return Err(bad(key, format!("'{text}' is not HOST:PORT")));
    }
    Ok(text)
}

/// `TALLY_CORS_ORIGINS`: comma-separated origins as browsers send them in
/// `Origin` (`https://app.example.com`, `http://localhost:3000`), compared
/// exactly; hosts are lower-cased as browsers do. `*` is refused: every
/// origin allowed to spend a person's credits is named.
fn parse_origins(text: &str) -> Result<Vec<String>, ConfigError> {
    let mut origins = Vec::new();
    for origin in text.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let host = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
        let valid = host.is_some_and(|h| {
            !h.is_empty()
                && h.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        });
        if !valid {
            return Err(bad(
                "TALLY_CORS_ORIGINS",
                format!(
                    "'{origin}' is not an origin like https://app.example.com (scheme and host, no path)"
                ),
            ));
        }
        let origin = origin.to_ascii_lowercase();
        if !origins.contains(&origin) {
            origins.push(origin);
        }
    }
    Ok(origins)
}

/// `DATABASE_URL`, `DATABASE_MIGRATION_URL`, `DATABASE_REPLICA_URL`,
/// `TALLY_REPLICA_MAX_LAG`, `TALLY_PG_STATEMENT_CACHE`,
/// `TALLY_DB_POOL_SIZE`, `TALLY_SQLITE_SYNCHRONOUS`.
struct Database {
    database: DbTarget,
    migration_database: Option<DbTarget>,
    replica_database: Option<DbTarget>,
    replica_max_lag: Duration,
    pg_statement_cache: bool,
    pool_size: u32,
    sqlite_synchronous_full: bool,
}

/// The credit's price, the marketplace's share, earnings and packs.
struct Money {
    max_free_messages: i32,
    credit_rate: CreditRate,
    marketplace_share: Decimal,
    earnings_hold: Duration,
    min_withdrawal: Credits,
    credit_packs: Vec<CreditPack>,
}

/// Idempotency keys' lifetime and lease, the settlement sweep's period.
struct Timings {
    idempotency_ttl: Duration,
    idempotency_lease: Duration,
    settlement_sweep: Duration,
    hold_max: Duration,
    shutdown_drain: Duration,
}

/// The Stripe keys and the URLs Stripe sends people back to.
struct Stripe {
    stripe: Option<StripeSettings>,
    stripe_webhook_secret: Option<String>,
    stripe_connect_webhook_secret: Option<String>,
    checkout_success_url: String,
    checkout_cancel_url: String,
    connect_return_url: String,
    connect_refresh_url: String,
}

/// The plans and the subscription that grants Pro.
struct Plans {
    plans: Vec<crate::domain::plans::Plan>,
    pro_price_id: Option<String>,
    past_due_grace: Duration,
}

fn bad(key: &str, why: String) -> ConfigError {
    ConfigError(format!("{key}: {why}"))
}

impl<'a> Raw<'a> {
    /// Refuses a key tally does not know (a typo would otherwise be ignored).
    fn new(values: &'a BTreeMap<String, String>) -> Result<Self, ConfigError> {
        if let Some(unknown) = values.keys().find(|k| !KEYS.iter().any(|(name, _)| name == k)) {
            return Err(ConfigError(format!("unknown setting '{unknown}'")));
        }
        Ok(Raw(values))
    }

    fn get(&self, key: &str) -> Option<String> {
        self.0
            .get(key)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .or_else(|| KEYS.iter().find(|(k, _)| *k == key).and_then(|(_, d)| d.map(str::to_string)))
    }

    /// The value, or "" when unset without a default.
    fn text(&self, key: &str) -> String {
        self.get(key).unwrap_or_default()
    }

    /// A duration (`24h`, `0s`, `7d`) of at most `max`.
    fn duration(&self, key: &str, max: Duration) -> Result<Duration, ConfigError> {
        let text = self.text(key);
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

    fn webhooks(&self) -> Result<WebhookSettings, ConfigError> {
        let allow_private = match self.text("TALLY_WEBHOOKS_ALLOW_PRIVATE").as_str() {
            "true" => true,
            "false" => false,
            other => {
                return Err(bad("TALLY_WEBHOOKS_ALLOW_PRIVATE", format!("'{other}' is not true or false")))
            }
        };
        let retry_base = self.duration("TALLY_WEBHOOK_RETRY_BASE", Duration::from_secs(3600))?;
        if retry_base < Duration::from_millis(10) {
            return Err(bad("TALLY_WEBHOOK_RETRY_BASE", "must be at least 10ms".into()));
        }
        let poll = self.duration("TALLY_WEBHOOK_POLL", Duration::from_secs(60))?;
        if poll < Duration::from_millis(10) {
            return Err(bad("TALLY_WEBHOOK_POLL", "must be at least 10ms".into()));
        }
        Ok(WebhookSettings { allow_private, retry_base, poll })
    }

    /// `TALLY_GROUP_COMMIT`: `off`, or the largest group, 1 to 256.
    fn group_commit(&self) -> Result<usize, ConfigError> {
        let text = self.text("TALLY_GROUP_COMMIT");
        if text.eq_ignore_ascii_case("off") {
            return Ok(1);
        }
        text.parse::<usize>()
            .ok()
            .filter(|n| (1..=256).contains(n))
            .ok_or_else(|| bad("TALLY_GROUP_COMMIT", format!("'{text}' is not off or 1 to 256")))
    }

    fn server(&self) -> Result<Server, ConfigError> {
        let bind = bind_address("TALLY_BIND", self.text("TALLY_BIND"))?;
        let metrics_bind = match self.get("TALLY_METRICS_BIND") {
            Some(m) => Some(bind_address("TALLY_METRICS_BIND", m)?),
            None => None,
        };
        let cors_origins = parse_origins(&self.text("TALLY_CORS_ORIGINS"))?;
        let workers = match self.get("TALLY_WORKERS") {
            Some(w) => Some(
                w.parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad("TALLY_WORKERS", format!("'{w}' is not a positive number")))?,
            ),
            None => None,
        };
        let log_json = match self.text("TALLY_LOG_FORMAT").as_str() {
            "text" => false,
            "json" => true,
            other => return Err(bad("TALLY_LOG_FORMAT", format!("'{other}' is not text or json"))),
        };
        let exports_text = self.text("TALLY_MAX_CONCURRENT_EXPORTS");
        let max_concurrent_exports = exports_text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_CONCURRENT_EXPORTS).contains(n))
            .ok_or_else(|| {
                bad(
                    "TALLY_MAX_CONCURRENT_EXPORTS",
                    format!("'{exports_text}' is not 1 to {MAX_CONCURRENT_EXPORTS}"),
                )
            })?;
        Ok(Server { bind, workers, log_json, max_concurrent_exports, cors_origins, metrics_bind })
    }

    fn database(&self) -> Result<Database, ConfigError> {
        let database = DbTarget::parse(&self.text("DATABASE_URL")).map_err(ConfigError)?;
        let pool_text = self.text("TALLY_DB_POOL_SIZE");
        let pool_size = pool_text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=512).contains(n))
            .ok_or_else(|| bad("TALLY_DB_POOL_SIZE", format!("'{pool_text}' is not 1 to 512")))?;
        let sqlite_synchronous_full =
            match self.text("TALLY_SQLITE_SYNCHRONOUS").to_ascii_uppercase().as_str() {
                "FULL" => true,
                "NORMAL" => false,
                other => {
                    return Err(bad("TALLY_SQLITE_SYNCHRONOUS", format!("'{other}' is not FULL or NORMAL")))
                }
            };
        let migration_database = match self.get("DATABASE_MIGRATION_URL") {
            Some(url) => {
                let target = DbTarget::parse(&url)
                    .map_err(|e| bad("DATABASE_MIGRATION_URL", e.replace("DATABASE_URL ", "")))?;
                if !matches!((&database, &target), (DbTarget::Postgres(_), DbTarget::Postgres(_))) {
                    return Err(bad(
                        "DATABASE_MIGRATION_URL",
                        format!(
                            "'{}' must be a postgres:// URL, and DATABASE_URL too (it is for running \
                             migrations past a connection pooler)",
                            target.display()
                        ),
                    ));
                }
                Some(target)
            }
            None => None,
        };
        let replica_database = match self.get("DATABASE_REPLICA_URL") {
            Some(url) => {
                let target = DbTarget::parse(&url)
                    .map_err(|e| bad("DATABASE_REPLICA_URL", e.replace("DATABASE_URL ", "")))?;
                match (&database, &target) {
                    (DbTarget::Postgres(_), DbTarget::Postgres(_)) => Some(target),
                    (DbTarget::Sqlite(_), _) => {
                        return Err(bad(
                            "DATABASE_REPLICA_URL",
                            "a read replica is for PostgreSQL: DATABASE_URL is SQLite, which has none; \
                             unset DATABASE_REPLICA_URL or use a postgres:// DATABASE_URL"
                                .to_string(),
                        ))
                    }
                    _ => {
                        return Err(bad(
                            "DATABASE_REPLICA_URL",
                            format!("'{}' must be a postgres:// URL", target.display()),
                        ))
                    }
                }
            }
            None => None,
        };
        let replica_max_lag = self.duration("TALLY_REPLICA_MAX_LAG", Duration::from_secs(3600))?;
        let pg_statement_cache = match self.text("TALLY_PG_STATEMENT_CACHE").to_ascii_lowercase().as_str() {
            "on" => true,
            "off" => false,
            other => return Err(bad("TALLY_PG_STATEMENT_CACHE", format!("'{other}' is not on or off"))),
        };
        Ok(Database {
            database,
            migration_database,
            replica_database,
            replica_max_lag,
            pg_statement_cache,
            pool_size,
            sqlite_synchronous_full,
        })
    }

    fn jwt(&self) -> Result<JwtSettings, ConfigError> {
        let public_key_pem = match self.get("TALLY_JWT_PUBLIC_KEY") {
            Some(path) => Some(
                std::fs::read_to_string(&path)
                    .map_err(|e| bad("TALLY_JWT_PUBLIC_KEY", format!("cannot read '{path}': {e}")))?,
            ),
            None => None,
        };
        let jwks_url = self.get("TALLY_JWT_JWKS_URL");
        if let Some(url) = &jwks_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(bad("TALLY_JWT_JWKS_URL", format!("'{url}' is not an http(s) URL")));
            }
        }
        Ok(JwtSettings {
            secret: self.get("TALLY_JWT_SECRET"),
            public_key_pem,
            jwks_url,
            issuer: self.get("TALLY_JWT_ISSUER"),
            audience: self.get("TALLY_JWT_AUDIENCE"),
            subject_claim: self.text("TALLY_JWT_SUBJECT_CLAIM"),
            roles_claim: self.text("TALLY_JWT_ROLES_CLAIM"),
        })
    }

    fn money(&self) -> Result<Money, ConfigError> {
        let credit_rate =
            CreditRate::parse(&self.text("TALLY_CREDIT_USD")).map_err(|e| bad("TALLY_CREDIT_USD", e))?;
        let share_text = self.text("TALLY_MARKETPLACE_SHARE");
        let marketplace_share: Decimal = share_text
            .parse()
            .ok()
            .filter(|d: &Decimal| *d >= Decimal::ZERO && *d <= Decimal::ONE)
            .ok_or_else(|| {
                bad("TALLY_MARKETPLACE_SHARE", format!("'{share_text}' is not between 0 and 1"))
            })?;
        let earnings_hold = self.duration("TALLY_EARNINGS_HOLD", YEAR)?;
        let min_text = self.text("TALLY_MIN_WITHDRAWAL");
        let min_withdrawal = Credits::parse(&min_text)
            .ok()
            .filter(|c| !c.is_negative())
            .ok_or_else(|| bad("TALLY_MIN_WITHDRAWAL", format!("'{min_text}' is not credits")))?;
        let credit_packs = match self.get("TALLY_CREDIT_PACKS") {
            Some(text) => parse_packs(&text).map_err(|e| bad("TALLY_CREDIT_PACKS", e))?,
            None => default_packs(),
        };
        let free_text = self.text("TALLY_MAX_FREE_MESSAGES");
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
        Ok(Money {
            credit_rate,
            marketplace_share,
            earnings_hold,
            min_withdrawal,
            credit_packs,
            max_free_messages,
        })
    }

    fn timings(&self) -> Result<Timings, ConfigError> {
        let idempotency_ttl = self.duration("TALLY_IDEMPOTENCY_TTL", YEAR)?;
        if idempotency_ttl < Duration::from_secs(24 * 3600) {
            return Err(bad("TALLY_IDEMPOTENCY_TTL", "must be at least 24h".into()));
        }
        // Tests only: any TTL, so that a test can watch a key expire.
        let idempotency_ttl = match self.get("TALLY_TEST_IDEMPOTENCY_TTL") {
            Some(_) => self.duration("TALLY_TEST_IDEMPOTENCY_TTL", YEAR)?,
            None => idempotency_ttl,
        };
        let idempotency_lease =
            self.duration("TALLY_IDEMPOTENCY_LEASE", Duration::from_secs(3600))?.max(Duration::from_secs(1));
        let settlement_sweep = self
            .duration("TALLY_SETTLEMENT_SWEEP", Duration::from_secs(86_400))?
            .max(Duration::from_millis(100));
        let hold_max =
            self.duration("TALLY_HOLD_MAX", Duration::from_secs(86_400))?.max(Duration::from_secs(1));
        let shutdown_drain = self.duration("TALLY_SHUTDOWN_DRAIN", Duration::from_secs(300))?;
        Ok(Timings { idempotency_ttl, idempotency_lease, settlement_sweep, hold_max, shutdown_drain })
    }

    fn stripe(&self) -> Stripe {
        Stripe {
            stripe: self.get("STRIPE_SECRET_KEY").map(|secret_key| StripeSettings {
                secret_key,
                webhook_secret: self.get("STRIPE_WEBHOOK_SECRET"),
                api_base: self.get("STRIPE_API_BASE"),
            }),
            stripe_webhook_secret: self.get("STRIPE_WEBHOOK_SECRET"),
            stripe_connect_webhook_secret: self.get("STRIPE_CONNECT_WEBHOOK_SECRET"),
            checkout_success_url: self.text("TALLY_CHECKOUT_SUCCESS_URL"),
            checkout_cancel_url: self.text("TALLY_CHECKOUT_CANCEL_URL"),
            connect_return_url: self.text("TALLY_CONNECT_RETURN_URL"),
            connect_refresh_url: self.text("TALLY_CONNECT_REFRESH_URL"),
        }
    }

    fn plans(&self) -> Result<Plans, ConfigError> {
        let plans = match self.get("TALLY_PLANS") {
            Some(text) => crate::domain::plans::parse_plans(&text).map_err(|e| bad("TALLY_PLANS", e))?,
            None => crate::domain::plans::default_plans(),
        };
        Ok(Plans {
            plans,
            pro_price_id: self.get("TALLY_PRO_PRICE_ID"),
            past_due_grace: self.duration("TALLY_PAST_DUE_GRACE", YEAR)?,
        })
    }

    fn invoicing(&self) -> Result<Invoicing, ConfigError> {
        let prefix = self.text("TALLY_INVOICE_PREFIX").trim().to_string();
        let prefix_ok = !prefix.is_empty()
            && prefix.len() <= 20
            && prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !prefix_ok {
            return Err(bad(
                "TALLY_INVOICE_PREFIX",
                format!("'{prefix}' is not 1 to 20 letters, digits, - or _"),
            ));
        }
        let seller_name = self.text("TALLY_SELLER_NAME").trim().to_string();
        if seller_name.is_empty() {
            return Err(bad("TALLY_SELLER_NAME", "must not be empty".into()));
        }
        let rates = match self.get("TALLY_TAX_RATES") {
            Some(text) => crate::domain::tax::parse_rates(&text).map_err(|e| bad("TALLY_TAX_RATES", e))?,
            None => BTreeMap::new(),
        };
        let inclusive = match self.text("TALLY_TAX_MODE").to_ascii_lowercase().as_str() {
            "inclusive" => true,
            "exclusive" => false,
            other => return Err(bad("TALLY_TAX_MODE", format!("'{other}' is not inclusive or exclusive"))),
        };
        let optional = |key: &str| self.get(key).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        Ok(Invoicing {
            prefix,
            seller_name,
            seller_address: optional("TALLY_SELLER_ADDRESS"),
            seller_tax_id: optional("TALLY_SELLER_TAX_ID"),
            tax: crate::domain::tax::TaxTable { rates, inclusive },
        })
    }
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
        assert_eq!(s.max_concurrent_exports, 4);
        assert_eq!(s.marketplace_share.to_string(), "0.30");
        assert!(s.stripe.is_none());
        assert!(s.require_jwt().unwrap_err().0.contains("TALLY_JWT_SECRET"));
        assert!(s.pg_statement_cache, "diesel's statement cache is on unless turned off");
        assert_eq!(s.migration_database, None, "migrations run through DATABASE_URL");
    }

    #[test]
    fn a_pooled_postgres_may_migrate_elsewhere_and_without_the_statement_cache() {
        let s = Settings::from_values(&values(&[
            ("DATABASE_URL", "postgres://u:p@pgbouncer:6432/tally"),
            ("DATABASE_MIGRATION_URL", "postgres://u:p@primary:5432/tally"),
            ("TALLY_PG_STATEMENT_CACHE", " OFF "),
        ]))
        .unwrap();
        assert_eq!(
            s.migration_database,
            Some(DbTarget::Postgres("postgres://u:p@primary:5432/tally".into()))
        );
        assert!(!s.pg_statement_cache);
        let on = Settings::from_values(&values(&[("TALLY_PG_STATEMENT_CACHE", "on")])).unwrap();
        assert!(on.pg_statement_cache);
        for (db, migration) in [
            ("sqlite://tally.db", "postgres://u@primary/tally"),
            ("postgres://u@pgbouncer/tally", "sqlite://other.db"),
            ("postgres://u@pgbouncer/tally", "mysql://u@primary/tally"),
        ] {
            let err = Settings::from_values(&values(&[
                ("DATABASE_URL", db),
                ("DATABASE_MIGRATION_URL", migration),
            ]))
            .unwrap_err();
            assert!(err.to_string().contains("DATABASE_MIGRATION_URL"), "{err}");
        }
        for cache in ["no", "0", "disabled"] {
            let err = Settings::from_values(&values(&[("TALLY_PG_STATEMENT_CACHE", cache)])).unwrap_err();
            assert!(err.to_string().contains("TALLY_PG_STATEMENT_CACHE"), "{err}");
        }
    }

    #[test]
    fn a_replica_is_postgres_only_and_its_lag_bound_defaults_to_five_seconds() {
        let none = Settings::from_values(&values(&[])).unwrap();
        assert_eq!(none.replica_database, None, "without the setting every read goes to the primary");
        assert_eq!(none.replica_max_lag, Duration::from_secs(5));
        let s = Settings::from_values(&values(&[
            ("DATABASE_URL", "postgres://u:p@primary:5432/tally"),
            ("DATABASE_REPLICA_URL", " postgres://u:p@replica:5432/tally "),
            ("TALLY_REPLICA_MAX_LAG", "0s"),
        ]))
        .unwrap();
        assert_eq!(s.replica_database, Some(DbTarget::Postgres("postgres://u:p@replica:5432/tally".into())));
        assert_eq!(s.replica_max_lag, Duration::ZERO);
        for (db, replica, expected) in [
            ("sqlite://tally.db", "postgres://u@replica/tally", "DATABASE_REPLICA_URL"),
            ("postgres://u@primary/tally", "sqlite://other.db", "DATABASE_REPLICA_URL"),
            ("postgres://u@primary/tally", "mysql://u@replica/tally", "DATABASE_REPLICA_URL"),
        ] {
            let err =
                Settings::from_values(&values(&[("DATABASE_URL", db), ("DATABASE_REPLICA_URL", replica)]))
                    .unwrap_err()
                    .to_string();
            assert!(err.contains(expected), "{err}");
        }
        let sqlite =
            Settings::from_values(&values(&[("DATABASE_REPLICA_URL", "postgres://u@replica/tally")]))
                .unwrap_err()
                .to_string();
        assert!(sqlite.contains("SQLite"), "the refusal says why: {sqlite}");
        for lag in ["soon", "2h", "-1s"] {
            let err = Settings::from_values(&values(&[("TALLY_REPLICA_MAX_LAG", lag)])).unwrap_err();
            assert!(err.to_string().contains("TALLY_REPLICA_MAX_LAG"), "{err}");
        }
        assert_eq!(
            Settings::from_values(&values(&[("TALLY_REPLICA_MAX_LAG", "1h")])).unwrap().replica_max_lag,
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn a_jwks_url_is_enough_and_the_claims_default_to_sub_and_roles() {
        let s =
            Settings::from_values(&values(&[("TALLY_JWT_JWKS_URL", "https://idp.test/jwks.json")])).unwrap();
        assert!(s.require_jwt().is_ok());
        assert_eq!((s.jwt.subject_claim.as_str(), s.jwt.roles_claim.as_str()), ("sub", "roles"));
        assert!(crate::auth::JwtVerifier::new(&s.jwt).is_ok());
        let both = Settings::from_values(&values(&[
            ("TALLY_JWT_JWKS_URL", "https://idp.test/jwks.json"),
            ("TALLY_JWT_SECRET", "a-secret-of-some-length"),
        ]))
        .unwrap();
        assert!(crate::auth::JwtVerifier::new(&both.jwt).is_err_and(|e| e.0.contains("only one")));
        let err = Settings::from_values(&values(&[("TALLY_JWT_JWKS_URL", "file:///etc/keys")])).unwrap_err();
        assert!(err.0.contains("TALLY_JWT_JWKS_URL"), "{}", err.0);
        let s = Settings::from_values(&values(&[("TALLY_JWT_ROLES_CLAIM", "realm_access.roles")])).unwrap();
        assert_eq!(s.jwt.roles_claim, "realm_access.roles");
    }

    #[test]
    fn a_short_idempotency_ttl_needs_the_test_setting() {
        let err = Settings::from_values(&values(&[("TALLY_IDEMPOTENCY_TTL", "1h")])).unwrap_err();
        assert!(err.0.contains("TALLY_IDEMPOTENCY_TTL"), "{}", err.0);
        let s = Settings::from_values(&values(&[("TALLY_TEST_IDEMPOTENCY_TTL", "1s")])).unwrap();
        assert_eq!(s.idempotency_ttl, Duration::from_secs(1));
        assert_eq!(Settings::from_values(&values(&[])).unwrap().idempotency_ttl, Duration::from_secs(86_400));
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
    fn every_key_reaches_its_setting() {
        let key = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(key.path(), "PEM TEXT").unwrap();
        let key_path = key.path().to_str().unwrap();
        let s = Settings::from_values(&values(&[
            ("DATABASE_URL", "postgres://u:p@db/tally"),
            ("TALLY_BIND", "0.0.0.0:9000"),
            ("TALLY_JWT_SECRET", " s3cret "),
            ("TALLY_JWT_PUBLIC_KEY", key_path),
            ("TALLY_JWT_ISSUER", "iss"),
            ("TALLY_JWT_AUDIENCE", "aud"),
            ("TALLY_CREDIT_USD", "0.25"),
            ("TALLY_MARKETPLACE_SHARE", "0.2"),
            ("TALLY_EARNINGS_HOLD", "2h"),
            ("TALLY_MIN_WITHDRAWAL", "7.5"),
            ("TALLY_DB_POOL_SIZE", "3"),
            ("TALLY_MAX_CONCURRENT_EXPORTS", "2"),
            ("TALLY_SQLITE_SYNCHRONOUS", "normal"),
            ("TALLY_IDEMPOTENCY_TTL", "48h"),
            ("TALLY_SETTLEMENT_SWEEP", "10ms"),
            ("TALLY_IDEMPOTENCY_LEASE", "0s"),
            ("TALLY_WORKERS", "2"),
            ("TALLY_LOG_FORMAT", "json"),
            ("TALLY_CREDIT_PACKS", r#"[{"id": "one", "name": "One", "credits": "10", "price_usd": "1.5"}]"#),
            ("TALLY_CHECKOUT_SUCCESS_URL", "https://s"),
            ("TALLY_CHECKOUT_CANCEL_URL", "https://c"),
            ("TALLY_CONNECT_RETURN_URL", "https://r"),
            ("TALLY_CONNECT_REFRESH_URL", "https://f"),
            ("TALLY_PRO_PRICE_ID", "price_1"),
            ("TALLY_PAST_DUE_GRACE", "3d"),
            ("TALLY_INVOICE_PREFIX", "ACME"),
            ("TALLY_SELLER_NAME", "Acme GmbH"),
            ("TALLY_SELLER_ADDRESS", "Hauptstr. 1; 10115 Berlin"),
            ("TALLY_SELLER_TAX_ID", "DE123456789"),
            ("TALLY_TAX_RATES", r#"{"DE": "0.19"}"#),
            ("TALLY_TAX_MODE", "exclusive"),
            ("STRIPE_SECRET_KEY", "sk_test_1"),
            ("STRIPE_WEBHOOK_SECRET", "whsec_1"),
            ("STRIPE_API_BASE", "http://127.0.0.1:1"),
        ]))
        .unwrap();
        assert_eq!(s.database, DbTarget::parse("postgres://u:p@db/tally").unwrap());
        assert_eq!(s.bind, "0.0.0.0:9000");
        assert_eq!(s.jwt.secret.as_deref(), Some("s3cret"));
        assert_eq!(s.jwt.public_key_pem.as_deref(), Some("PEM TEXT"));
        assert_eq!(s.jwt.issuer.as_deref(), Some("iss"));
        assert_eq!(s.jwt.audience.as_deref(), Some("aud"));
        assert_eq!(s.credit_rate.usd_per_credit().to_string(), "0.25");
        assert_eq!(s.marketplace_share.to_string(), "0.2");
        assert_eq!(s.earnings_hold, Duration::from_secs(7200));
        assert_eq!(s.min_withdrawal, Credits::parse("7.5").unwrap());
        assert_eq!(s.pool_size, 3);
        assert_eq!(s.max_concurrent_exports, 2);
        assert!(!s.sqlite_synchronous_full);
        assert_eq!(s.idempotency_ttl, Duration::from_secs(48 * 3600));
        assert_eq!(s.settlement_sweep, Duration::from_millis(100), "at least 100ms");
        assert_eq!(s.idempotency_lease, Duration::from_secs(1), "at least 1s");
        assert_eq!(s.workers, Some(2));
        assert!(s.log_json);
        assert_eq!(s.credit_packs.len(), 1);
        assert_eq!(s.credit_packs[0].price.cents(), 150);
        assert_eq!(s.checkout_success_url, "https://s");
        assert_eq!(s.checkout_cancel_url, "https://c");
        assert_eq!(s.connect_return_url, "https://r");
        assert_eq!(s.connect_refresh_url, "https://f");
        assert_eq!(s.plans, crate::domain::plans::default_plans());
        assert_eq!(s.pro_price_id.as_deref(), Some("price_1"));
        assert_eq!(s.past_due_grace, Duration::from_secs(3 * 86_400));
        assert_eq!(s.invoicing.prefix, "ACME");
        assert_eq!(s.invoicing.seller_name, "Acme GmbH");
        assert_eq!(s.invoicing.seller_address.as_deref(), Some("Hauptstr. 1; 10115 Berlin"));
        assert_eq!(s.invoicing.seller_tax_id.as_deref(), Some("DE123456789"));
        assert_eq!(s.invoicing.tax.rate_for(Some("DE")), Some(Decimal::new(19, 2)));
        assert!(!s.invoicing.tax.inclusive);
        let stripe = s.stripe.unwrap();
        assert_eq!(stripe.secret_key, "sk_test_1");
        assert_eq!(stripe.webhook_secret.as_deref(), Some("whsec_1"));
        assert_eq!(stripe.api_base.as_deref(), Some("http://127.0.0.1:1"));
        assert_eq!(s.stripe_webhook_secret.as_deref(), Some("whsec_1"));
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
        for exports in ["0", "65", "-1", "many"] {
            let err =
                Settings::from_values(&values(&[("TALLY_MAX_CONCURRENT_EXPORTS", exports)])).unwrap_err();
            assert!(err.to_string().contains("TALLY_MAX_CONCURRENT_EXPORTS"), "{err}");
        }
        let ok = Settings::from_values(&values(&[("TALLY_MAX_CONCURRENT_EXPORTS", "64")])).unwrap();
        assert_eq!(ok.max_concurrent_exports, 64);
        for (key, value) in [
            ("TALLY_TAX_RATES", r#"{"ZZ": "0.1"}"#),
            ("TALLY_TAX_MODE", "sometimes"),
            ("TALLY_INVOICE_PREFIX", "A B"),
        ] {
            let err = Settings::from_values(&values(&[(key, value)])).unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
        let ok = Settings::from_values(&values(&[("TALLY_EARNINGS_HOLD", "0s")])).unwrap();
        assert_eq!(ok.earnings_hold, Duration::ZERO);
    }
}
