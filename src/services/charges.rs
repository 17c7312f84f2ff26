//! Message charges and quotes (SPEC 4).
//!
//! A charge is one write transaction (the idempotent request's) that:
//! 1. loads the agent with its model's current prices (copied into the charge);
//! 2. resolves the payer: the person's wallet, or the org wallet when the
//!    charge names an organization the person belongs to;
//! 3. uses a free message if the person has one left on the agent (one
//!    upsert guarded by `used < free_messages`), recording a subsidy entry;
//!    only public agents give free messages (at most
//!    `TALLY_MAX_FREE_MESSAGES`): the platform subsidizes the marketplace,
//!    not an organization's private agents;
//! 4. otherwise posts one entry: payer −total, infra revenue +infra (and the
//!    metered parts of a usage: tokens, tools, generations),
//!    marketplace revenue +share, the creator organization's pending
//!    earnings +rest; records an accrual that settlement makes available
//!    after the hold; and adds the cost to the spend counters (one guarded
//!    upsert per limit: the wallet's day and week, the member's day). The
//!    counters and the payer's balance are written last (see
//!    `create_charge_with`).
//!
//! With a usage, the price is metered ([`metered_price`], the one function
//! that prices a usage): a free message then covers the per-message runtime
//! infra only, and the payer still pays the metered parts.
//!
//! Hot rows: a charge locks only what it must check: the payer's wallet row
//! (the guarded debit), the person's free-message row for this agent, and
//! the payer's spend-counter rows. Platform accounts (infra and marketplace
//! revenue, subsidies) and a creator's pending earnings keep no cached
//! balance: their postings are appended and their balances are derived, so
//! charges of different payers never queue on a shared row however popular
//! an agent is. The creator's available balance (a cached, checked row) is
//! only touched by settlement, in batches, never by a charge.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use rust_decimal::Decimal;
use serde::Serialize;
use utoipa::ToSchema;

use super::agents::{self, AgentRow};
use super::history::TransactionReferences;
use super::idempotency::{Claiming, Outcome, PendingClaim, RequestKey};
use super::models::ModelRow;
use super::orgs::role_in;
use super::people;
use super::{Caller, Ctx, ErrorCode, ServiceError, ServiceResult};
use crate::db::models::{AccountRow, HoldRow, MemberRow, NewAccrual, NewCharge};
use crate::db::schema::{accounts, charges, earnings_accruals, models as models_table, org_members};
use crate::db::{self, counters, DbConn, WriteTx};
use crate::domain::ids::{new_id, transaction_id};
use crate::domain::limits::Period;
use crate::domain::metadata::Metadata;
use crate::domain::pricing::{price_metered, MeteredPrice, ModelRates};
use crate::domain::usage::Usage;
use crate::domain::{AccountKind, Credits, EntryKind, OwnerType};
use crate::ledger::{self, AccountRef, Grants, NewEntry, Overdraft, Spend};

/// One charged (or free) message.
#[derive(Debug, Serialize, ToSchema)]
pub struct Charge {
    /// `chg_` id.
    pub id: String,
    pub agent_id: String,
    /// The model the agent ran on, with the prices below as they were.
    pub model: String,
    /// The person who sent the message.
    pub user_id: String,
    /// The organization whose wallet paid, if not the person's own.
    pub org_id: Option<String>,
    /// True for a free message (nothing debited).
    pub free: bool,
    /// Runtime infra price used, in credits.
    #[schema(value_type = String, example = "0.3")]
    pub runtime_infra: Credits,
    /// Publisher add-on charged, in credits.
    #[schema(value_type = String, example = "1")]
    pub publisher_addon: Credits,
    /// What the wallet paid: runtime infra + add-on, or 0 for a free message.
    #[schema(value_type = String, example = "1.3")]
    pub total: Credits,
    /// The wallet that paid.
    pub wallet_id: String,
    /// That wallet's balance after the charge.
    #[schema(value_type = String, example = "48.7")]
    pub balance_after: Credits,
    /// Free messages the person has left on this agent (read again with
    /// `GET /v1/charges/{id}`: as of now).
    pub free_messages_left: i64,
    /// The wallet transaction it created.
    pub transaction_id: String,
    pub created_at: DateTime<Utc>,
    /// The usage the message was priced by (null for a charge sent without one).
    pub usage: Option<Usage>,
    /// The parts of `total`.
    pub price: Option<PriceParts>,
    /// Credits per million input tokens used (null without a usage, or
    /// when the model has no such rate).
    #[schema(value_type = Option<String>, example = "0.15")]
    pub input_per_mtok: Option<Credits>,
    /// Credits per million output tokens used (null likewise).
    #[schema(value_type = Option<String>, example = "0.6")]
    pub output_per_mtok: Option<Credits>,
    /// Credits per generated asset used (null likewise).
    #[schema(value_type = Option<String>, example = "0.04")]
    pub per_generation: Option<Credits>,
    /// The price per call of each tool the usage named, as it was.
    #[schema(value_type = BTreeMap<String, String>)]
    pub tool_prices: BTreeMap<String, Credits>,
    /// Of `total`, what a hold had reserved (0 unless captured from a hold).
    #[schema(value_type = String, example = "0")]
    pub held: Credits,
    /// Of `total`, what the wallet could not pay when a hold was captured
    /// above its amount (0 unless captured from a hold).
    #[schema(value_type = String, example = "0")]
    pub uncollected: Credits,
    /// The hold the charge was captured from (null unless).
    pub hold_id: Option<String>,
    /// Credits refunded of it by operators so far (`POST
    /// /v1/admin/charges/{id}/refund`); 0 when it is made.
    #[schema(value_type = String, example = "0")]
    pub refunded: Credits,
    /// The caller's pairs given with the charge (a capture keeps its
    /// hold's); `{}` for none.
    pub metadata: Metadata,
}

/// What the wallet paid for a message, part by part. The seven
/// parts (`runtime_infra`, `input_tokens`, `output_tokens`, `tools`,
/// `generations`, `platform_share`, `creator_earnings`) add up exactly to
/// `total`. On a free message the platform pays the runtime infra
/// (`subsidy`) and the creator forgoes the add-on (`addon_forgone`): both
/// parts are then 0 here, and the wallet pays the metered parts.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PriceParts {
    /// Runtime infra paid by the wallet (per message).
    #[schema(value_type = String, example = "0.01")]
    pub runtime_infra: Credits,
    /// Input tokens x `input_per_mtok` / 10^6, rounded up to the micro-credit.
    #[schema(value_type = String, example = "0.000186")]
    pub input_tokens: Credits,
    /// Output tokens x `output_per_mtok` / 10^6, rounded up to the micro-credit.
    #[schema(value_type = String, example = "0.000341")]
    pub output_tokens: Credits,
    /// Tool calls x their prices.
    #[schema(value_type = String, example = "0.02")]
    pub tools: Credits,
    /// Generations x `per_generation`.
    #[schema(value_type = String, example = "0.04")]
    pub generations: Credits,
    /// The platform's part of the add-on.
    #[schema(value_type = String, example = "0.015")]
    pub platform_share: Credits,
    /// The creator's part of the add-on (pending earnings).
    #[schema(value_type = String, example = "0.035")]
    pub creator_earnings: Credits,
    /// What the wallet paid: the sum of the parts above.
    #[schema(value_type = String, example = "0.120527")]
    pub total: Credits,
    /// The runtime infra a free message's subsidy paid (0 otherwise).
    #[schema(value_type = String, example = "0")]
    pub subsidy: Credits,
    /// The add-on a free message's creator forwent (0 otherwise).
    #[schema(value_type = String, example = "0")]
    pub addon_forgone: Credits,
}

impl PriceParts {
    fn new(charged: &MeteredPrice, subsidy: Credits, addon_forgone: Credits) -> Self {
        PriceParts {
            runtime_infra: charged.runtime_infra,
            input_tokens: charged.input_tokens,
            output_tokens: charged.output_tokens,
            tools: charged.tools,
            generations: charged.generations,
            platform_share: charged.platform_share,
            creator_earnings: charged.creator_earnings,
            total: charged.total,
            subsidy,
            addon_forgone,
        }
    }
}

/// What the next message would cost and who would pay; moves nothing.
#[derive(Debug, Serialize, ToSchema)]
pub struct Quote {
    pub agent_id: String,
    pub model: String,
    /// True when the next message is free.
    pub free: bool,
    #[schema(value_type = String, example = "0.3")]
    pub runtime_infra: Credits,
    #[schema(value_type = String, example = "1")]
    pub publisher_addon: Credits,
    /// What the next message would cost the wallet (0 when free).
    #[schema(value_type = String, example = "1.3")]
    pub total: Credits,
    pub free_messages_left: i64,
    /// The wallet that would pay.
    pub wallet_id: String,
    #[schema(value_type = String, example = "48.7")]
    pub balance: Credits,
    /// Whether the balance covers the total (false when frozen).
    pub sufficient: bool,
    pub frozen: bool,
}

/// What a message with this usage would cost, and whether it would be
/// charged now; moves nothing.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageQuote {
    #[serde(flatten)]
    pub quote: Quote,
    /// The usage quoted (all zeros when none was sent).
    pub usage: Usage,
    /// The parts of `total`.
    pub price: PriceParts,
    /// Whether a charge of `total` would go through now: the wallet is not
    /// frozen, no spend limit would be passed and the balance covers it.
    pub allowed: bool,
    /// Why not, when not allowed: `wallet_frozen`, `spend_limit_exceeded`,
    /// `insufficient_funds` or `amount_out_of_range` (the error the charge
    /// would get).
    pub reason: Option<ErrorCode>,
    /// The reason in words.
    pub message: Option<String>,
}

/// Who pays: the wallet row, the paying organization and the member's limit.
pub(super) struct Payer {
    pub wallet: AccountRow,
    pub org_id: Option<String>,
    pub member_daily_limit: Option<Credits>,
    /// The wallet's held account, when [`load_for`] found it (a hold's
    /// reservation goes there); `None`: not looked up, or not made yet.
    pub held_id: Option<i64>,
}

impl Payer {
    pub fn wallet_ref(&self) -> AccountRef {
        AccountRef { id: self.wallet.id, kind: AccountKind::Wallet }
    }
}

/// The join condition of an agent (`agents as a`) with its creator
/// organization's pending earnings account.
macro_rules! pending_account_of_agent {
    () => {
        accounts::owner_type
            .eq(OwnerType::Org.as_str())
            .and(accounts::owner_id.eq(a::org_id))
            .and(accounts::kind.eq(AccountKind::EarningsPending.as_str()))
    };
}

/// Loads an agent with its model row (prices now) and the id of the creator
/// organization's pending earnings account if it exists yet: one query
/// instead of two per charge.
pub(super) fn load_priced(
    conn: &mut DbConn,
    agent_id: &str,
) -> ServiceResult<(AgentRow, ModelRow, Option<i64>)> {
    use crate::db::schema::agents as a;
    a::table
        .inner_join(models_table::table)
        .left_join(accounts::table.on(pending_account_of_agent!()))
        .filter(a::id.eq(agent_id))
        .select((AgentRow::as_select(), ModelRow::as_select(), accounts::id.nullable()))
        .first(conn)
        .optional()?
        .ok_or(ServiceError::NotFound("agent"))
}

/// What a message needs first, in one query: the agent, its model and its
/// creator's pending account ([`load_priced`]), the payer (the person's
/// own wallet when the person pays and has one; the organization's wallet
/// and the person's membership when it pays) and, on PostgreSQL, the id of the
/// entry the message will write (see [`ledger::open_as`]).
pub(super) struct Loaded {
    pub agent: AgentRow,
    pub model: ModelRow,
    pub pending_id: Option<i64>,
    pub payer: Option<Payer>,
    pub next_entry: Option<i64>,
}

/// The columns [`load_for`] reads for every payer: the agent, its model, the
/// creator's pending account, the paying wallet, the next entry id, the
/// wallet's held account and whether the request's key was claimed (see
/// [`load_for`]).
type FirstRead = (AgentRow, ModelRow, Option<i64>, Option<AccountRow>, Option<i64>, Option<i64>, i64);

/// [`FirstRead`] and the person's membership of the paying organization.
type OrgFirstRead =
    (AgentRow, ModelRow, Option<i64>, Option<AccountRow>, Option<i64>, Option<i64>, i64, Option<MemberRow>);

/// The first read of a message ([`Loaded`]). On PostgreSQL it also makes
/// the claim of the request's key when that is still to be made
/// ([`RequestKey::claim_to_merge`]): one round trip for both.
pub(super) fn load_for(
    conn: &mut DbConn,
    request: &RequestKey,
    agent_id: &str,
    user_id: &str,
    org_id: Option<&str>,
) -> ServiceResult<Loaded> {
    use crate::db::schema::agents as a;
    use diesel::sql_types::{BigInt, Nullable};
    let (wallets, helds) = diesel::alias!(accounts as wallets, accounts as helds);
    let next_entry = diesel::dsl::sql::<Nullable<BigInt>>(ledger::next_entry_id_sql(conn));
    let claim = request.claim_to_merge();
    let claimed = diesel::dsl::sql::<BigInt>(PendingClaim::column(claim));
    // The agent, its model, its creator's pending account and the wallet
    // and held account of `$owner` (a person or an organization), joined
    // in one query, with the claim before it when there is one;
    // `$($join)*` and `$($select)*` add what the payer needs besides.
    macro_rules! load {
        ($owner:expr, $owner_id:expr, [$($join:tt)*], [$($select:tt)*]) => {{
            let query = a::table
                .inner_join(models_table::table)
                .left_join(accounts::table.on(pending_account_of_agent!()))
                .left_join(
                    wallets.on(wallets
                        .field(accounts::owner_type)
                        .eq($owner.as_str())
                        .and(wallets.field(accounts::owner_id).eq($owner_id))
                        .and(wallets.field(accounts::kind).eq(AccountKind::Wallet.as_str()))),
                )
                .left_join(
                    helds.on(helds
                        .field(accounts::owner_type)
                        .eq($owner.as_str())
                        .and(helds.field(accounts::owner_id).eq($owner_id))
                        .and(helds.field(accounts::kind).eq(AccountKind::Held.as_str()))),
                )
                $($join)*
                .filter(a::id.eq(agent_id))
                .select((
                    AgentRow::as_select(),
                    ModelRow::as_select(),
                    accounts::id.nullable(),
                    wallets
                        .fields(<AccountRow as Selectable<<DbConn as Connection>::Backend>>::construct_selection())
                        .nullable(),
                    next_entry,
                    helds.field(accounts::id).nullable(),
                    claimed,
                    $($select)*
                ))
                .limit(1);
            match claim {
                Some(claim) => crate::fixed!(Claiming(claim, query)).get_result(conn),
                None => crate::fixed!(query).get_result(conn),
            }
            .optional()?
            .ok_or(ServiceError::NotFound("agent"))?
        }};
    }
    let (agent, model, pending_id, payer, next_entry, claimed) = match org_id {
        None => {
            let (agent, model, pending_id, wallet, next_entry, held_id, claimed): FirstRead =
                load!(OwnerType::Person, user_id, [], []);
            let payer =
                wallet.map(|wallet| Payer { wallet, org_id: None, member_daily_limit: None, held_id });
            (agent, model, pending_id, payer, next_entry, claimed)
        }
        // The organization's wallet and the person's membership (role and
        // limit) as [`resolve_payer`] reads them; either missing: `None`,
        // and [`resolve_payer`] says why.
        Some(org_id) => {
            let (agent, model, pending_id, wallet, next_entry, held_id, claimed, member): OrgFirstRead = load!(
                OwnerType::Org,
                org_id,
                [.left_join(
                    org_members::table
                        .on(org_members::org_id.eq(org_id).and(org_members::user_id.eq(user_id))),
                )],
                [<MemberRow as Selectable<<DbConn as Connection>::Backend>>::construct_selection().nullable()]
            );
            let payer = wallet.zip(member).map(|(wallet, member)| Payer {
                wallet,
                org_id: Some(org_id.to_string()),
                member_daily_limit: member.daily_limit,
                held_id,
            });
            (agent, model, pending_id, payer, next_entry, claimed)
        }
    };
    if let Some(claim) = claim {
        claim.made(claimed == 1)?;
    }
    Ok(Loaded { agent, model, pending_id, payer, next_entry })
}

/// The payer [`load_for`] found, else [`resolve_payer`].
pub(super) fn resolve_payer_unless(
    conn: &mut DbConn,
    loaded: Option<Payer>,
    user_id: &str,
    org_id: Option<&str>,
) -> ServiceResult<Payer> {
    match loaded {
        Some(payer) => Ok(payer),
        None => resolve_payer(conn, user_id, org_id),
    }
}

fn org_wallet(conn: &mut DbConn, org_id: &str) -> ServiceResult<AccountRow> {
    db::accounts::account_of(conn, OwnerType::Org, org_id, AccountKind::Wallet)?
        .ok_or(ServiceError::NotFound("organization"))
}

/// The payer (a person's wallet is made on first sight: inside a charge's
/// transaction, in a savepoint of it).
pub(super) fn resolve_payer(conn: &mut DbConn, user_id: &str, org_id: Option<&str>) -> ServiceResult<Payer> {
    match org_id {
        Some(org_id) => {
            role_in(conn, org_id, user_id)?;
            let member: MemberRow =
                org_members::table.find((org_id, user_id)).select(MemberRow::as_select()).first(conn)?;
            Ok(Payer {
                wallet: org_wallet(conn, org_id)?,
                org_id: Some(org_id.to_string()),
                member_daily_limit: member.daily_limit,
                held_id: None,
            })
        }
        None => {
            let wallet = people::personal_wallet(conn, user_id)?;
            Ok(Payer { wallet, org_id: None, member_daily_limit: None, held_id: None })
        }
    }
}

/// The add-on this payer pays: none when the paying organization owns the agent.
fn addon_for(agent: &AgentRow, payer: &Payer) -> Credits {
    if payer.org_id.as_deref() == Some(agent.org_id.as_str()) {
        Credits::ZERO
    } else {
        agent.effective_addon()
    }
}

/// The price of one message: `runtime_infra + ceil(input_tokens x
/// input_per_mtok / 10^6) + ceil(output_tokens x output_per_mtok / 10^6) +
/// sum(tool price x calls) + per_generation x generations + addon`, the
/// add-on split by `share` (see [`price_metered`]). An all-zero usage is
/// the flat price. Refusals are 422s: `unknown_tool` (a tool missing from
/// `tool_prices`), `model_not_metered` (tokens or generations the model has
/// no rate for), `amount_out_of_range`.
pub fn metered_price(
    rates: &ModelRates,
    tool_prices: &BTreeMap<String, Credits>,
    addon: Credits,
    share: Decimal,
    usage: &Usage,
) -> ServiceResult<MeteredPrice> {
    price_metered(rates, tool_prices, addon, share, usage).map_err(ServiceError::from_pricing)
}

/// The current prices of the tools a usage names (unknown ones are absent).
pub fn tool_prices(conn: &mut DbConn, usage: &Usage) -> ServiceResult<BTreeMap<String, Credits>> {
    super::tools::prices_of(conn, usage.tool_calls.keys())
}

/// The price of a message for this payer, at the current prices.
pub(super) fn price_for(
    conn: &mut DbConn,
    ctx: &Ctx,
    agent: &AgentRow,
    model: &ModelRow,
    payer: &Payer,
    usage: &Usage,
) -> ServiceResult<(MeteredPrice, BTreeMap<String, Credits>)> {
    let tools = tool_prices(conn, usage)?;
    let price = metered_price(
        &model.rates(),
        &tools,
        addon_for(agent, payer),
        ctx.settings.marketplace_share,
        usage,
    )?;
    Ok((price, tools))
}

/// The person charged: the caller, or for a `service` token the named person.
pub fn charged_person(caller: &Caller, user_id: Option<&str>) -> ServiceResult<String> {
    match user_id {
        Some(u) if caller.service => {
            crate::domain::text::checked_id("user_id", u).map_err(ServiceError::Validation)?;
            Ok(u.to_string())
        }
        Some(u) if u == caller.id => Ok(u.to_string()),
        Some(_) => {
            Err(ServiceError::Forbidden("only a service token may charge another person (user_id)".into()))
        }
        None if caller.service => {
            Err(ServiceError::Validation("a service token must name the person charged in user_id".into()))
        }
        None => Ok(caller.id.clone()),
    }
}

/// A quote and what it was computed from.
struct Quoted {
    quote: Quote,
    price: PriceParts,
    payer: Payer,
}

/// The quote of the next message with `usage` (all zeros: the flat price).
fn quote_parts(
    conn: &mut DbConn,
    ctx: &Ctx,
    user_id: &str,
    agent_id: &str,
    org_id: Option<&str>,
    usage: &Usage,
) -> ServiceResult<Quoted> {
    let (agent, model, _) = load_priced(conn, agent_id)?;
    agents::check_visible(conn, &agent, Some(user_id))?;
    let payer = resolve_payer(conn, user_id, org_id)?;
    let (price, _) = price_for(conn, ctx, &agent, &model, &payer, usage)?;
    let used = counters::free_messages_used(conn, &agent.id, user_id)?;
    let free_messages = agent.effective_free_messages(ctx.settings.max_free_messages);
    let free_left = i64::from(free_messages).saturating_sub(used).max(0);
    let free = free_left > 0;
    let (charged, subsidy, forgone) = charged_part(&price, free)?;
    let balance = payer.wallet.balance.unwrap_or(Credits::ZERO);
    let quote = Quote {
        agent_id: agent.id,
        model: model.id,
        free,
        runtime_infra: price.runtime_infra,
        publisher_addon: charged.publisher_addon,
        total: charged.total,
        free_messages_left: free_left,
        wallet_id: payer.wallet.public_id.clone().unwrap_or_default(),
        balance,
        sufficient: !payer.wallet.frozen && balance >= charged.total,
        frozen: payer.wallet.frozen,
    };
    Ok(Quoted { quote, price: PriceParts::new(&charged, subsidy, forgone), payer })
}

/// `GET /v1/agents/{id}/quote`.
pub fn quote(
    conn: &mut DbConn,
    ctx: &Ctx,
    user_id: &str,
    agent_id: &str,
    org_id: Option<&str>,
) -> ServiceResult<Quote> {
    Ok(quote_parts(conn, ctx, user_id, agent_id, org_id, &Usage::default())?.quote)
}

/// `POST /v1/agents/{id}/quote`: the quote of a message with `usage`, and
/// whether a charge of it would go through now (frozen wallet, spend limits
/// and balance, checked in the order a charge checks them).
pub fn quote_usage(
    conn: &mut DbConn,
    ctx: &Ctx,
    user_id: &str,
    agent_id: &str,
    org_id: Option<&str>,
    usage: Usage,
) -> ServiceResult<UsageQuote> {
    let Quoted { quote, price, payer } = quote_parts(conn, ctx, user_id, agent_id, org_id, &usage)?;
    let total = quote.total;
    let refusal = if payer.wallet.frozen {
        Some(ServiceError::WalletFrozen { wallet_id: quote.wallet_id.clone() })
    } else if total.is_zero() {
        None
    } else if let Some(refused) = check_spend(conn, &payer, user_id, total)? {
        Some(refused)
    } else if quote.balance < total {
        Some(ServiceError::InsufficientFunds { wallet_id: quote.wallet_id.clone() })
    } else {
        None
    };
    let (reason, message) = match refusal {
        None => (None, None),
        Some(e) => {
            let kind = match &e {
                ServiceError::WalletFrozen { .. } => ErrorCode::WalletFrozen,
                ServiceError::SpendLimitExceeded { .. } => ErrorCode::SpendLimitExceeded,
                ServiceError::InsufficientFunds { .. } => ErrorCode::InsufficientFunds,
                ServiceError::Refused { kind, .. } => *kind,
                _ => ErrorCode::InternalError,
            };
            (Some(kind), Some(e.to_string()))
        }
    };
    Ok(UsageQuote { quote, usage, price, allowed: reason.is_none(), reason, message })
}

/// The member's daily limit in the paying organization (org wallets only):
/// counted in `spend_counters`, one row per member and day. The wallet's own
/// day and week are cached on its row and counted by the entry's
/// [`Spend`], in the same statement as its balance.
const MEMBER_LIMIT: &str = "your daily spend limit in this organization";

/// Refuses the charge (or hold) when the member's daily limit would be
/// passed, else counts `amount` in the member's day of `now`. The wallet's
/// limits are checked when the entry is posted ([`Spend::count`]).
pub(super) fn count_member_spend(
    tx: &mut WriteTx<'_>,
    payer: &Payer,
    user_id: &str,
    amount: Credits,
    now: chrono::NaiveDateTime,
) -> ServiceResult<()> {
    if payer.org_id.is_none() {
        return Ok(());
    }
    let limit = payer.member_daily_limit;
    let counted = counters::add_spend(
        tx,
        payer.wallet.id,
        user_id,
        &Period::Day.key(now),
        amount.micros(),
        limit.map(Credits::micros),
    )?;
    match (counted, limit) {
        (Some(_), _) => Ok(()),
        (None, Some(limit)) => Err(ServiceError::spend_limit(amount, MEMBER_LIMIT, limit, Period::Day)),
        (None, None) => Err(ServiceError::out_of_range()),
    }
}

/// What a charge of `amount` would be refused for by the spend limits now,
/// without counting (for a quote), in the order a charge checks them: the
/// member's day, the wallet's day, the wallet's week.
fn check_spend(
    conn: &mut DbConn,
    payer: &Payer,
    user_id: &str,
    amount: Credits,
) -> ServiceResult<Option<ServiceError>> {
    let now = db::now();
    let wallet = &payer.wallet;
    let member = match payer.org_id {
        Some(_) => Some(counters::spent(conn, wallet.id, user_id, &Period::Day.key(now))?),
        None => None,
    };
    if let Some(spent) = member {
        let refused = over(spent, amount, payer.member_daily_limit, |limit| {
            ServiceError::spend_limit(amount, MEMBER_LIMIT, limit, Period::Day)
        });
        if refused.is_some() {
            return Ok(refused);
        }
    }
    for (period, limit) in [(Period::Day, wallet.daily_limit), (Period::Week, wallet.weekly_limit)] {
        let refused = over(wallet.spent_in(period, now), amount, limit, |limit| {
            ServiceError::wallet_spend_limit(amount, limit, period)
        });
        if refused.is_some() {
            return Ok(refused);
        }
    }
    Ok(None)
}

/// The refusal of `amount` on top of `spent` under `limit` (made by
/// `refusal`), or past the range of an amount; `None` when it fits.
fn over(
    spent: Credits,
    amount: Credits,
    limit: Option<Credits>,
    refusal: impl FnOnce(Credits) -> ServiceError,
) -> Option<ServiceError> {
    match (spent.checked_add(amount), limit) {
        (None, _) => Some(ServiceError::out_of_range()),
        (Some(after), Some(limit)) if after > limit => Some(refusal(limit)),
        _ => None,
    }
}

/// `POST /v1/agents/{id}/charges` without a usage (the flat price).
pub fn create_charge(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    user_id: &str,
    agent_id: &str,
    org_id: Option<&str>,
    request: &RequestKey,
) -> ServiceResult<Outcome<Charge>> {
    let message = Message {
        id: None,
        user_id,
        agent_id,
        org_id,
        usage: None,
        hold: None,
        metadata: &Metadata::default(),
    };
    create_charge_with(tx, ctx, &message, request)
}

/// `POST /v1/agents/{id}/charges`; runs inside the idempotent request's
/// write transaction: load -> resolve the payer -> price -> split -> post
/// -> respond. With a usage the price is metered ([`metered_price`]) and the
/// charge records the usage, the rates it used and the price parts.
pub fn create_charge_with(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    message: &Message<'_>,
    request: &RequestKey,
) -> ServiceResult<Outcome<Charge>> {
    if message.hold.is_some() {
        return Err(ServiceError::Internal("a one-step charge names no hold".into()));
    }
    charge_message(tx, ctx, message, request)
}

/// One message to charge: in one step, or by capturing the hold that
/// reserved it.
pub struct Message<'a> {
    /// The charge's id when the caller made it (a capture records it on
    /// the hold as the hold ends); `None`: made here.
    pub id: Option<&'a str>,
    pub user_id: &'a str,
    pub agent_id: &'a str,
    pub org_id: Option<&'a str>,
    pub usage: Option<&'a Usage>,
    /// The open hold this charge captures (already moved out of `open` in
    /// this transaction); `None` for a one-step charge.
    pub hold: Option<&'a HoldRow>,
    /// The caller's pairs, stored with the charge (checked by the caller).
    pub metadata: &'a Metadata,
}

/// Where a capture's money comes from: the whole hold leaves the held
/// account; what the final cost leaves of it goes back to the wallet, or
/// what it passes is taken from the wallet's available balance as far as
/// that goes, the rest `uncollected`.
struct FromHold {
    legs: Vec<crate::domain::Leg>,
    held: Credits,
    /// What the wallet paid in all (from the hold and beyond it).
    wallet_paid: Credits,
    uncollected: Credits,
}

fn from_hold(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    hold: &HoldRow,
    payer: &Payer,
    total: Credits,
) -> ServiceResult<FromHold> {
    let held = hold.amount;
    let wallet = payer.wallet_ref();
    let (wallet_paid, uncollected) = if total <= held {
        (total, Credits::ZERO)
    } else {
        let excess = total.checked_sub(held).ok_or_else(ServiceError::out_of_range)?;
        // The excess is taken only from what the wallet has now (its row
        // locked until the commit: its grants that can still be spent) and
        // never from a frozen wallet.
        let balance = db::locks::lock_balance(tx, wallet.id)?.max(Credits::ZERO);
        let available = balance.min(ledger::grants::spendable(tx, wallet.id, db::now())?);
        let taken = if payer.wallet.frozen { Credits::ZERO } else { excess.min(available) };
        let paid = held.checked_add(taken).ok_or_else(ServiceError::out_of_range)?;
        (paid, excess.checked_sub(taken).ok_or_else(ServiceError::out_of_range)?)
    };
    let mut legs = Vec::with_capacity(3);
    if !held.is_zero() {
        legs.push(AccountRef { id: hold.held_account_id, kind: AccountKind::Held }.leg(neg(held)?));
    }
    let back = held.checked_sub(wallet_paid).ok_or_else(ServiceError::out_of_range)?;
    if !back.is_zero() || legs.is_empty() {
        legs.push(wallet.leg(back));
    }
    if !uncollected.is_zero() {
        legs.push(ctx.platform.uncollected_expense.leg(neg(uncollected)?));
    }
    Ok(FromHold { legs, held, wallet_paid, uncollected })
}

/// Settles a capture's spend: the hold counted its amount when it was made;
/// the difference to what the wallet paid is given back, or the excess
/// counted (never refused: the work is done), in the hold's periods. The
/// member's day is settled here; the wallet's day and week are returned,
/// for the capture's entry.
fn settle_hold_spend(tx: &mut WriteTx<'_>, hold: &HoldRow, paid: Credits) -> ServiceResult<Option<Spend>> {
    let (wallet, day, week) = (hold.payer_account_id, hold.day_key.clone(), hold.week_key.clone());
    if paid <= hold.amount {
        let back = hold.amount.checked_sub(paid).ok_or_else(ServiceError::out_of_range)?;
        super::holds::give_back_member_spend(tx, hold, back)?;
        return Ok(Spend::give_back(wallet, day, week, back.micros()));
    }
    let more = paid.checked_sub(hold.amount).ok_or_else(ServiceError::out_of_range)?.micros();
    if hold.payer_org_id.is_some() {
        counters::add_spend(tx, wallet, &hold.user_id, &hold.day_key, more, None)?;
    }
    Ok(Spend::count_in(wallet, day, week, more, false))
}

/// A charge, in one step or from a hold: load -> resolve the payer ->
/// price -> split -> post -> respond.
pub(super) fn charge_message(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    message: &Message<'_>,
    request: &RequestKey,
) -> ServiceResult<Outcome<Charge>> {
    let Message { id, user_id, agent_id, org_id, usage, hold, metadata } = *message;
    let Loaded { agent, model, pending_id, payer, next_entry } =
        load_for(tx, request, agent_id, user_id, org_id)?;
    agents::check_visible(tx, &agent, Some(user_id))?;
    let payer = resolve_payer_unless(tx, payer, user_id, org_id)?;
    let wallet_id = payer.wallet.public_id.clone().unwrap_or_default();
    // A hold was made before any freeze: capturing it charges what it
    // reserved (and takes nothing more from a frozen wallet).
    if payer.wallet.frozen && hold.is_none() {
        return Err(ServiceError::WalletFrozen { wallet_id });
    }
    let zero = Usage::default();
    let (price, tools) = price_for(tx, ctx, &agent, &model, &payer, usage.unwrap_or(&zero))?;
    let free_messages = agent.effective_free_messages(ctx.settings.max_free_messages);
    let (free, free_used) = match hold {
        // The hold reserved the free message (or found none left).
        Some(h) => (h.free, None),
        None => {
            let used = counters::use_free_message(tx, &agent.id, user_id, free_messages)?;
            (used.is_some(), used)
        }
    };
    let split = split_charge(tx, ctx, &agent, &price, &payer, pending_id, free)?;
    let charge_id = id.map_or_else(|| new_id("chg"), str::to_string);
    let references = TransactionReferences {
        agent_id: Some(agent.id.clone()),
        model: Some(model.id.clone()),
        charge_id: Some(charge_id.clone()),
        runtime_infra: Some(price.runtime_infra.to_string()),
        publisher_addon: Some(split.charged.publisher_addon.to_string()),
        hold_id: hold.map(|h| h.id.clone()),
        ..Default::default()
    }
    .with_usage(usage);
    let Split { kind, mut legs, charged, subsidy, forgone } = split;
    let total = charged.total;
    let captured = match hold {
        Some(h) => {
            let from = from_hold(tx, ctx, h, &payer, total)?;
            // The split's first leg is the wallet's debit of the total:
            // a capture takes it from the hold instead.
            legs.splice(0..1, from.legs.iter().copied());
            Some(from)
        }
        None => None,
    };

    // The rows no other charge waits on come first (the journal row, the
    // charge, the accrual); the rows a busy shared wallet's charges queue on
    // (its spend counters, its guarded balance) are taken last, just before
    // the commit, so that their locks are held as briefly as possible.
    // Declared before the entry, which borrows them until it is posted.
    let (row, metered);
    let mut entry = ledger::open_as(
        tx,
        next_entry,
        NewEntry {
            spend: None,
            kind,
            legs,
            overdraft: if hold.is_some() { Overdraft::Refuse } else { Overdraft::RefuseFrozen },
            reverses: None,
            request_key: Some(request.as_str()),
            actor: Some(user_id),
            memo: None,
            metadata: serde_json::to_value(&references).unwrap_or_default(),
            grants: match hold {
                Some(h) => Grants::Hold(h.id.clone()),
                None => Grants::Draw { hold: None },
            },
        },
    )
    .map_err(|e| ServiceError::from_ledger(e, &wallet_id))?;
    let created_at = entry.created_at();
    row = ChargeRow {
        id: &charge_id,
        agent: &agent,
        model: &model,
        user_id,
        payer: &payer,
        free,
        infra: price.runtime_infra,
        charged: &charged,
        forgone,
        metered: usage.map(|u| (u, &tools)),
        hold: hold.zip(captured.as_ref()).map(|(h, c)| (h.id.as_str(), c.held, c.uncollected)),
        entry_id: entry.entry_id(),
        created_at,
    };
    metered = row.metered.map(|(usage, tools)| MeteredColumns::new(usage, tools)).transpose()?;
    attach_charge(&mut entry, ctx, &row, metered.as_ref())?;
    db::metadata::insert(tx, &charge_id, metadata)?;
    // The member's day is counted here; the wallet's day and week with its
    // balance, when the entry is posted.
    let spend = match (hold, &captured) {
        (Some(h), Some(c)) => settle_hold_spend(tx, h, c.wallet_paid)?,
        _ if !total.is_zero() => {
            count_member_spend(tx, &payer, user_id, total, created_at)?;
            Spend::count(payer.wallet.id, created_at, total.micros())
        }
        _ => None,
    };
    let posted = entry.with_spend(spend).post(tx).map_err(|e| ServiceError::from_ledger(e, &wallet_id))?;
    let balance_after = match posted.leg_of(payer.wallet.id) {
        Some(leg) => leg.balance_after.unwrap_or_default(),
        // A capture that took exactly the hold does not touch the wallet.
        None => ledger::balance_of(tx, payer.wallet_ref())?,
    };
    let transaction = posted
        .leg_of(payer.wallet.id)
        .or_else(|| posted.legs.first())
        .ok_or_else(|| ServiceError::Internal("charge posting missing".into()))?;
    let used_now = match free_used {
        Some(n) => n,
        // No free messages on the agent: none left, whatever was used.
        None if free_messages <= 0 => 0,
        None => counters::free_messages_used(tx, &agent.id, user_id)?,
    };
    let rates = model.rates();
    let charge = Charge {
        id: charge_id,
        agent_id: agent.id,
        model: model.id,
        user_id: user_id.to_string(),
        org_id: payer.org_id,
        free,
        runtime_infra: price.runtime_infra,
        publisher_addon: charged.publisher_addon,
        total,
        wallet_id,
        balance_after,
        free_messages_left: i64::from(free_messages).saturating_sub(used_now).max(0),
        transaction_id: transaction_id(transaction.posting_id),
        created_at: posted.created_at.and_utc(),
        usage: usage.cloned(),
        price: Some(PriceParts::new(&charged, subsidy, forgone)),
        // As the row keeps them: the rates only with a usage.
        input_per_mtok: usage.and(rates.input_per_mtok),
        output_per_mtok: usage.and(rates.output_per_mtok),
        per_generation: usage.and(rates.per_generation),
        tool_prices: tools,
        held: captured.as_ref().map_or(Credits::ZERO, |c| c.held),
        uncollected: captured.as_ref().map_or(Credits::ZERO, |c| c.uncollected),
        hold_id: hold.map(|h| h.id.clone()),
        refunded: Credits::ZERO,
        metadata: metadata.clone(),
    };
    let headers = vec![
        ("X-Balance-Remaining".to_string(), balance_after.to_string()),
        ("X-Request-Cost".to_string(), total.to_string()),
    ];
    Ok(Outcome { body: charge, headers })
}

/// What the payer pays of `price`: all of it, or for a free message the
/// metered parts only (with the subsidy and the add-on forgone).
pub(super) fn charged_part(
    price: &MeteredPrice,
    free: bool,
) -> ServiceResult<(MeteredPrice, Credits, Credits)> {
    if !free {
        return Ok((*price, Credits::ZERO, Credits::ZERO));
    }
    let f = price.as_free().ok_or_else(ServiceError::out_of_range)?;
    Ok((f.price, f.subsidy, f.addon_forgone))
}

/// Where a message's price goes: a free message takes only the metered
/// parts from the wallet (the platform subsidizes the runtime infra and the
/// add-on is forgone); a paid one takes the total from the wallet. Infra
/// revenue receives the runtime infra and the metered parts; the add-on is
/// split between the marketplace share and the creator's pending earnings.
fn split_charge(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    agent: &AgentRow,
    price: &MeteredPrice,
    payer: &Payer,
    pending_id: Option<i64>,
    free: bool,
) -> ServiceResult<Split> {
    let wallet = AccountRef { id: payer.wallet.id, kind: AccountKind::Wallet };
    let platform = ctx.platform;
    let infra = price.infra_revenue().ok_or_else(ServiceError::out_of_range)?;
    let (charged, subsidy, forgone) = charged_part(price, free)?;
    if free {
        return Ok(Split {
            kind: EntryKind::FreeMessage,
            legs: vec![
                wallet.leg(neg(charged.total)?),
                platform.subsidy_expense.leg(neg(subsidy)?),
                platform.infra_revenue.leg(infra),
            ],
            charged,
            subsidy,
            forgone,
        });
    }
    let mut legs = vec![wallet.leg(neg(price.total)?), platform.infra_revenue.leg(infra)];
    if !price.platform_share.is_zero() {
        legs.push(platform.marketplace_revenue.leg(price.platform_share));
    }
    if !price.creator_earnings.is_zero() {
        let pending = match pending_id {
            Some(id) => AccountRef { id, kind: AccountKind::EarningsPending },
            None => {
                ledger::ensure_account(tx, OwnerType::Org, &agent.org_id, AccountKind::EarningsPending, None)?
            }
        };
        legs.push(pending.leg(price.creator_earnings));
    }
    Ok(Split { kind: EntryKind::Charge, legs, charged, subsidy, forgone })
}

/// What the charge row records.
struct ChargeRow<'a> {
    id: &'a str,
    agent: &'a AgentRow,
    model: &'a ModelRow,
    user_id: &'a str,
    payer: &'a Payer,
    free: bool,
    /// The runtime infra price used (a free message's subsidy).
    infra: Credits,
    /// What the payer paid, part by part.
    charged: &'a MeteredPrice,
    forgone: Credits,
    /// The usage and the tool prices it was priced with, for a metered charge.
    metered: Option<(&'a Usage, &'a BTreeMap<String, Credits>)>,
    /// The hold it captured, what that held and what went uncollected.
    hold: Option<(&'a str, Credits, Credits)>,
    entry_id: i64,
    created_at: chrono::NaiveDateTime,
}

/// The charge row, and the creator's accrual that settles after the hold:
/// written with the entry's postings (they refer to the entry).
fn attach_charge<'x>(
    entry: &mut ledger::OpenEntry<'x>,
    ctx: &Ctx,
    c: &'x ChargeRow<'x>,
    m: Option<&'x MeteredColumns>,
) -> ServiceResult<()> {
    let charged = c.charged;
    let creator = charged.creator_earnings;
    entry.attach(Box::new(diesel::insert_into(charges::table).values(NewCharge {
        id: c.id,
        agent_id: &c.agent.id,
        model_id: &c.model.id,
        creator_org_id: &c.agent.org_id,
        user_id: c.user_id,
        payer_account_id: c.payer.wallet.id,
        payer_org_id: c.payer.org_id.as_deref(),
        free: c.free,
        runtime_infra: c.infra,
        publisher_addon: charged.publisher_addon,
        addon_forgone: c.forgone,
        platform_share: charged.platform_share,
        creator_earnings: creator,
        total: charged.total,
        provider_cost_micro_usd: c.model.provider_cost_micro_usd,
        entry_id: c.entry_id,
        created_at: c.created_at,
        input_tokens: m.map(|m| m.input_tokens),
        output_tokens: m.map(|m| m.output_tokens),
        generations: m.map(|m| m.generations),
        tool_calls: m.map(|m| m.tool_calls.as_str()),
        input_per_mtok: m.and(c.model.input_per_mtok),
        output_per_mtok: m.and(c.model.output_per_mtok),
        per_generation: m.and(c.model.per_generation),
        tool_prices: m.map(|m| m.tool_prices.as_str()),
        input_tokens_cost: m.map(|_| charged.input_tokens),
        output_tokens_cost: m.map(|_| charged.output_tokens),
        tools_cost: m.map(|_| charged.tools),
        generations_cost: m.map(|_| charged.generations),
        hold_id: c.hold.map(|(id, _, _)| id),
        held: c.hold.map_or(Credits::ZERO, |(_, held, _)| held),
        uncollected: c.hold.map_or(Credits::ZERO, |(_, _, u)| u),
    })));
    if !creator.is_zero() {
        let hold = chrono::Duration::from_std(ctx.settings.earnings_hold)
            .map_err(|e| ServiceError::Internal(format!("earnings hold: {e}")))?;
        let available_at = c
            .created_at
            .checked_add_signed(hold)
            .ok_or_else(|| ServiceError::Internal("earnings hold passes the calendar".into()))?;
        entry.attach(Box::new(diesel::insert_into(earnings_accruals::table).values(NewAccrual {
            org_id: &c.agent.org_id,
            charge_id: c.id,
            amount: creator,
            available_at,
            created_at: c.created_at,
        })));
    }
    Ok(())
}

/// A metered charge's usage and the tool prices it used, as its row keeps
/// them (the rates and parts are copied from the model and the price).
struct MeteredColumns {
    input_tokens: i64,
    output_tokens: i64,
    generations: i64,
    /// `{"tool_id": calls}`.
    tool_calls: String,
    /// `{"tool_id": "price per call"}`.
    tool_prices: String,
}

impl MeteredColumns {
    fn new(usage: &Usage, tools: &BTreeMap<String, Credits>) -> ServiceResult<Self> {
        let count = |n: u64| i64::try_from(n).map_err(|_| ServiceError::out_of_range());
        Ok(MeteredColumns {
            input_tokens: count(usage.input_tokens)?,
            output_tokens: count(usage.output_tokens)?,
            generations: count(usage.generations)?,
            tool_calls: usage.tool_calls_json(),
            tool_prices: serde_json::to_string(tools).map_err(|e| ServiceError::Internal(e.to_string()))?,
        })
    }
}

/// The entry of a charge and what the payer paid.
struct Split {
    kind: EntryKind,
    legs: Vec<crate::domain::Leg>,
    /// What the payer pays, part by part (a free message: the metered parts).
    charged: MeteredPrice,
    /// The runtime infra a free message's subsidy pays.
    subsidy: Credits,
    /// The add-on a free message did not charge (for reporting).
    forgone: Credits,
}

fn neg(c: Credits) -> ServiceResult<Credits> {
    c.checked_neg().ok_or_else(|| ServiceError::Internal("amount out of range".into()))
}
