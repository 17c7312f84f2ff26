//! Top-ups (SPEC 5): payment orders for credit packs, paid through Stripe
//! Checkout or settled by an operator; refunds and disputes taken back by
//! reversing entries; gap-free receipt numbers. The Stripe events that
//! reach these functions are routed by `crate::flows::stripe_events`.
//!
//! A wallet is credited only when the payment is confirmed: by a signed
//! `checkout.session.completed` (paid) or `async_payment_succeeded` event, or
//! by an operator settling a manual order. Each Stripe event is processed in
//! one transaction that first records its id, so a duplicate delivery
//! changes nothing; the order's status is changed by a guarded `UPDATE`, so
//! two different events confirming one payment credit it once.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use utoipa::ToSchema;

use super::events::{self, EventType};
use super::history::TransactionReferences;
use super::idempotency::{Outcome, RequestKey};
use super::invoices::StripeTax;
use super::stripe_events::EventOutcome;
use super::wallets::{load_for, Access};
use super::{Caller, Ctx, ErrorCode, ServiceError, ServiceResult};
use crate::config::CreditPack;
use crate::db::billing::NewTopUp;
pub use crate::db::billing::TopUpRow;
use crate::db::models::AccountRow;
use crate::db::schema::{accounts, journal_entries, receipt_counter, top_ups};
use crate::db::{self, DbConn, WriteTx};
use crate::domain::ids::new_id;
use crate::domain::metadata::Metadata;
pub use crate::domain::TopUpMethod;
use crate::domain::{AccountKind, Credits, EntryKind, TopUpStatus, UsdCents, Validity};
use crate::domain::{GrantCategory, GrantSource};
use crate::ledger::{self, AccountRef, GrantSpec, Grants, NewEntry, Overdraft};
use crate::stripe::webhook::{Charge as StripeCharge, CheckoutSession, Dispute};
use crate::stripe::{RefundRef, SessionRef, TopUpCheckout};
use chrono::NaiveDateTime;
use std::collections::BTreeMap;

/// A credit pack on sale.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreditPackView {
    pub id: String,
    pub name: String,
    /// Credits bought.
    #[schema(value_type = String, example = "50")]
    pub credits: Credits,
    /// Extra credits given with the pack.
    #[schema(value_type = String, example = "0")]
    pub bonus_credits: Credits,
    /// Price in USD of the default validity (`default_validity`).
    #[schema(value_type = String, example = "5.00")]
    pub price_usd: UsdCents,
    /// The validity a top-up gets when it names none.
    pub default_validity: Validity,
    /// The validities on sale and their prices in USD (`{"30d": "5.00",
    /// "lifetime": "7.50"}`): credits of a `30d` or `90d` top-up expire that
    /// long after they are credited; `lifetime` credits never do.
    #[schema(value_type = BTreeMap<String, String>)]
    pub validity: BTreeMap<Validity, UsdCents>,
}

/// The packs on sale.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreditPackList {
    pub data: Vec<CreditPackView>,
    pub has_more: bool,
}

/// A top-up: a payment order for a credit pack.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopUp {
    /// `top_` id.
    pub id: String,
    pub wallet_id: String,
    pub pack_id: String,
    /// `pending`, `paid`, `failed`, `refunded`, `disputed`, `amount_mismatch`
    /// (paid, but not the order's amount or currency: an operator settles it
    /// at the paid amount or rejects it), `rejected` or `expired` (the
    /// Checkout Session expired unpaid).
    #[schema(value_type = super::names::TopUpStatus)]
    pub status: String,
    /// Credits the wallet receives when paid (pack credits + bonus).
    #[schema(value_type = String, example = "50")]
    pub credits: Credits,
    /// The bonus part of `credits`.
    #[schema(value_type = String, example = "0")]
    pub bonus_credits: Credits,
    /// The price in USD.
    #[schema(value_type = String, example = "5.00")]
    pub amount_usd: UsdCents,
    /// `stripe` (Checkout) or `manual` (settled by an operator).
    pub method: TopUpMethod,
    /// How long the credits stay spendable once credited.
    pub validity: Validity,
    /// When the credits expire (null until paid, and for `lifetime`).
    pub credits_expire_at: Option<DateTime<Utc>>,
    /// Where the person pays (Stripe Checkout); null for a manual order.
    pub checkout_url: Option<String>,
    /// The gap-free receipt number, once paid.
    pub receipt_number: Option<i64>,
    /// USD refunded so far.
    #[schema(value_type = String, example = "0.00")]
    pub refunded_usd: UsdCents,
    /// What Stripe says was paid, when it did not match the order
    /// (`amount_mismatch`); null otherwise.
    #[schema(value_type = Option<String>, example = "4.99")]
    pub paid_amount: Option<UsdCents>,
    /// The currency of `paid_amount`.
    pub paid_currency: Option<String>,
    pub created_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    /// The caller's pairs given when the top-up was started; `{}` for none
    /// (and for auto top-ups).
    pub metadata: Metadata,
}

impl TopUpRow {
    /// What the Checkout Session for this order needs.
    pub fn checkout(&self, ctx: &Ctx, pack_name: &str) -> TopUpCheckout {
        TopUpCheckout {
            top_up_id: self.id.clone(),
            wallet_id: self.wallet_id.clone(),
            pack_name: match self.validity {
                Validity::Lifetime => format!("{pack_name} (credits never expire)"),
                v => format!("{pack_name} (credits valid {} days)", v.duration().map_or(0, |d| d.num_days())),
            },
            amount_cents: self.amount_cents,
            success_url: ctx.settings.checkout_success_url.clone(),
            cancel_url: ctx.settings.checkout_cancel_url.clone(),
        }
    }

    fn wallet(&self) -> AccountRef {
        AccountRef { id: self.wallet_account_id, kind: AccountKind::Wallet }
    }
}

/// The top-up as the API shows it, with its pairs (one query).
fn view(conn: &mut DbConn, row: TopUpRow) -> ServiceResult<TopUp> {
    let metadata = db::metadata::of(conn, &row.id)?;
    Ok(view_with(row, metadata))
}

/// A page of top-ups as the API shows them, their pairs read in one query.
fn views(conn: &mut DbConn, rows: Vec<TopUpRow>) -> ServiceResult<Vec<TopUp>> {
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let mut pairs = db::metadata::of_many(conn, &ids)?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let metadata = pairs.remove(&row.id).unwrap_or_default();
            view_with(row, metadata)
        })
        .collect())
}

fn view_with(row: TopUpRow, metadata: Metadata) -> TopUp {
    TopUp {
        credits: row.credits.checked_add(row.bonus_credits).unwrap_or(Credits::MAX),
        bonus_credits: row.bonus_credits,
        amount_usd: UsdCents::new(row.amount_cents),
        refunded_usd: UsdCents::new(row.refunded_cents),
        paid_amount: row.paid_cents.map(UsdCents::new),
        paid_currency: row.paid_currency,
        id: row.id,
        wallet_id: row.wallet_id,
        pack_id: row.pack_id,
        status: row.status.as_str().to_string(),
        method: row.method,
        validity: row.validity,
        credits_expire_at: row.paid_at.and_then(|t| expiry_of(row.validity, t)).map(|t| t.and_utc()),
        checkout_url: row.checkout_url,
        receipt_number: row.receipt_number,
        created_at: row.created_at.and_utc(),
        paid_at: row.paid_at.map(|t| t.and_utc()),
        metadata,
    }
}

fn pack_view(p: &CreditPack) -> CreditPackView {
    CreditPackView {
        id: p.id.clone(),
        name: p.name.clone(),
        credits: p.credits,
        bonus_credits: p.bonus_credits,
        price_usd: p.price,
        default_validity: p.default_validity(),
        validity: p.prices.iter().copied().collect(),
    }
}

/// `GET /v1/credit-packs`.
pub fn list_packs(ctx: &Ctx) -> CreditPackList {
    CreditPackList { data: ctx.settings.credit_packs.iter().map(pack_view).collect(), has_more: false }
}

pub fn find_pack<'a>(ctx: &'a Ctx, pack_id: &str) -> ServiceResult<&'a CreditPack> {
    ctx.settings
        .credit_packs
        .iter()
        .find(|p| p.id == pack_id)
        .ok_or_else(|| ServiceError::Validation(format!("pack_id '{pack_id}' is not a credit pack on sale")))
}

fn load(conn: &mut DbConn, id: &str) -> ServiceResult<TopUpRow> {
    top_ups::table
        .find(id)
        .select(TopUpRow::as_select())
        .first(conn)
        .optional()?
        .ok_or(ServiceError::NotFound("top-up"))
}

/// What a top-up buys and how it is paid.
#[derive(Debug, Clone)]
pub struct TopUpOrder {
    pub pack_id: String,
    /// The pack's default validity when `None`.
    pub validity: Option<Validity>,
    /// Stripe when configured, else manual, when `None`.
    pub method: Option<TopUpMethod>,
    /// The caller's pairs, checked by the caller; stored with the order.
    pub metadata: Metadata,
}

/// First step of `POST /v1/wallets/{id}/top-ups`: the order of this request
/// (created, or found again when the request is retried after a crash).
pub fn prepare_top_up(
    conn: &mut DbConn,
    ctx: &Ctx,
    caller: &Caller,
    wallet_id: &str,
    order: &TopUpOrder,
    request: &RequestKey,
) -> ServiceResult<TopUpRow> {
    let TopUpOrder { pack_id, validity, method, metadata } = order;
    let (validity, method) = (*validity, *method);
    let pack = find_pack(ctx, pack_id)?.clone();
    let validity = validity.unwrap_or_else(|| pack.default_validity());
    let price = pack.price_of(validity).ok_or_else(|| {
        let on_sale: Vec<&str> = pack.prices.iter().map(|(v, _)| v.as_str()).collect();
        ServiceError::Validation(format!(
            "pack '{}' is not sold with validity '{validity}' (on sale: {})",
            pack.id,
            on_sale.join(", ")
        ))
    })?;
    db::write_tx(conn, |tx| {
        let wallet = load_for(tx, caller, wallet_id, Access::Manage)?;
        let method = match (method, ctx.settings.stripe.is_some()) {
            (Some(TopUpMethod::Stripe), false) => {
                return Err(ServiceError::Refused {
                    kind: ErrorCode::CheckoutUnavailable,
                    message: "method 'stripe' needs Stripe (STRIPE_SECRET_KEY), which is not configured; \
                              use 'manual'"
                        .into(),
                })
            }
            (Some(m), _) => m,
            (None, true) => TopUpMethod::Stripe,
            (None, false) => TopUpMethod::Manual,
        };
        let (amount_cents, rate) = price_with_tax(tx, ctx, wallet.owner_type, &wallet.owner_id, price)?;
        let existing: Option<TopUpRow> = top_ups::table
            .filter(top_ups::request_key.eq(request.as_str()))
            .select(TopUpRow::as_select())
            .first(tx.conn())
            .optional()?;
        if let Some(row) = existing {
            return Ok(row);
        }
        let id = new_id("top");
        let now = db::now();
        diesel::insert_into(top_ups::table)
            .values(NewTopUp {
                id: &id,
                wallet_account_id: wallet.id,
                wallet_id,
                created_by: &caller.id,
                pack_id: &pack.id,
                credits: pack.credits,
                bonus_credits: pack.bonus_credits,
                amount_cents,
                currency: "usd",
                method,
                status: TopUpStatus::Pending,
                request_key: request.as_str(),
                created_at: now,
                updated_at: now,
                validity,
                tax_rate: rate.map(|r| r.to_string()),
            })
            .execute(tx.conn())?;
        db::metadata::insert(tx, &id, metadata)?;
        load(tx, &id)
    })
}

/// The order's amount in cents and the rate table's tax rate, by the
/// buyer's country as their billing profile says now: an exclusive rate is
/// added to the price.
fn price_with_tax(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    owner_type: crate::domain::OwnerType,
    owner_id: &str,
    price: UsdCents,
) -> ServiceResult<(i64, Option<rust_decimal::Decimal>)> {
    let tax = &ctx.settings.invoicing.tax;
    let country = super::billing_profiles::profile_of(tx, owner_type, owner_id)?
        .and_then(|p| p.address.map(|a| a.country));
    let rate = tax.rate_for(country.as_deref()).filter(|r| !r.is_zero());
    let amount_cents = match rate {
        Some(r) => crate::domain::tax::gross_price(price.cents(), r, tax.inclusive)
            .ok_or_else(|| ServiceError::Internal("price with tax out of range".into()))?,
        None => price.cents(),
    };
    Ok((amount_cents, rate))
}

/// The top-up an auto top-up order pays for (made when the order is about
/// to be sent, found again on a retry by its request key
/// `auto_top_up:{order id}`): a Stripe order priced and taxed as a Checkout
/// top-up, so its settlement, grants, validity and invoice are the same.
pub(crate) fn auto_top_up_order(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    wallet: &crate::db::auto_top_ups::WalletAutoTopUpRow,
    pack: &CreditPack,
    validity: Validity,
    order_id: &str,
) -> ServiceResult<TopUpRow> {
    let request_key = format!("auto_top_up:{order_id}");
    let existing: Option<TopUpRow> = top_ups::table
        .filter(top_ups::request_key.eq(&request_key))
        .select(TopUpRow::as_select())
        .first(tx.conn())
        .optional()?;
    if let Some(row) = existing {
        return Ok(row);
    }
    let price = pack.price_of(validity).ok_or_else(|| {
        ServiceError::Validation(format!("pack '{}' is not sold with validity '{validity}'", pack.id))
    })?;
    let (amount_cents, rate) = price_with_tax(tx, ctx, wallet.owner_type, &wallet.owner_id, price)?;
    let id = new_id("top");
    let now = db::now();
    let wallet_id = wallet.public_id.clone().unwrap_or_default();
    diesel::insert_into(top_ups::table)
        .values(NewTopUp {
            id: &id,
            wallet_account_id: wallet.id,
            wallet_id: &wallet_id,
            created_by: "auto_top_up",
            pack_id: &pack.id,
            credits: pack.credits,
            bonus_credits: pack.bonus_credits,
            amount_cents,
            currency: "usd",
            method: TopUpMethod::Stripe,
            status: TopUpStatus::Pending,
            request_key: &request_key,
            created_at: now,
            updated_at: now,
            validity,
            tax_rate: rate.map(|r| r.to_string()),
        })
        .execute(tx.conn())?;
    load(tx, &id)
}

/// Marks an auto top-up's order `failed` (from `pending`).
pub(crate) fn fail_pending(tx: &mut WriteTx<'_>, top_up_id: &str) -> ServiceResult<()> {
    diesel::update(top_ups::table.find(top_up_id).filter(top_ups::status.eq(TopUpStatus::Pending)))
        .set((top_ups::status.eq(TopUpStatus::Failed), top_ups::updated_at.eq(db::now())))
        .execute(tx.conn())?;
    Ok(())
}

/// A top-up as the API shows it, for another service's event data.
pub(crate) fn view_of(conn: &mut DbConn, id: &str) -> ServiceResult<TopUp> {
    let row = load(conn, id)?;
    view(conn, row)
}

/// Keeps the PaymentIntent of an auto top-up on its order.
pub(crate) fn set_payment_intent(
    tx: &mut WriteTx<'_>,
    top_up_id: &str,
    payment_intent: &str,
) -> ServiceResult<()> {
    diesel::update(top_ups::table.find(top_up_id))
        .set((top_ups::payment_intent_id.eq(payment_intent), top_ups::updated_at.eq(db::now())))
        .execute(tx.conn())?;
    Ok(())
}

/// Last step of `POST /v1/wallets/{id}/top-ups`: keeps the Checkout Session
/// (if any) on the order; runs in the request's completing transaction.
pub fn attach_session(
    tx: &mut WriteTx<'_>,
    top_up_id: &str,
    session: Option<&SessionRef>,
) -> ServiceResult<Outcome<TopUp>> {
    if let Some(s) = session {
        diesel::update(top_ups::table.find(top_up_id).filter(top_ups::checkout_session_id.is_null()))
            .set((
                top_ups::checkout_session_id.eq(&s.id),
                top_ups::checkout_url.eq(&s.url),
                top_ups::payment_intent_id.eq(&s.payment_intent),
                top_ups::updated_at.eq(db::now()),
            ))
            .execute(tx.conn())?;
    }
    let row = load(tx, top_up_id)?;
    Ok(view(tx, row)?.into())
}

/// `GET /v1/top-ups/{id}`: whoever may read its wallet.
pub fn get_top_up(conn: &mut DbConn, caller: &Caller, id: &str) -> ServiceResult<TopUp> {
    let row = load(conn, id)?;
    load_for(conn, caller, &row.wallet_id, Access::Read).map_err(|_| ServiceError::NotFound("top-up"))?;
    view(conn, row)
}

/// Credits an order once: a guarded status change (from one of `from`), the
/// next receipt number, and the entry wallet +(credits + bonus) / cash
/// −credits / bonus_expense −bonus. Returns false when the order was not in
/// one of `from`.
fn credit(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    row: &TopUpRow,
    from: &[TopUpStatus],
    actor: &str,
    request_key: Option<&str>,
    stripe_tax: Option<StripeTax>,
) -> ServiceResult<bool> {
    let now = db::now();
    let claimed = diesel::update(top_ups::table.find(&row.id).filter(top_ups::status.eq_any(from)))
        .set((top_ups::status.eq(TopUpStatus::Paid), top_ups::updated_at.eq(now), top_ups::paid_at.eq(now)))
        .execute(tx.conn())?;
    if claimed == 0 {
        return Ok(false);
    }
    let receipt: i64 = diesel::update(receipt_counter::table.find(1))
        .set(receipt_counter::last_number.eq(receipt_counter::last_number + 1))
        .returning(receipt_counter::last_number)
        .get_result(tx.conn())?;
    let (credits, bonus) = (row.credits, row.bonus_credits);
    let total =
        credits.checked_add(bonus).ok_or_else(|| ServiceError::Internal("top-up overflows".into()))?;
    let mut legs = vec![row.wallet().leg(total), ctx.platform.cash.leg(neg(credits)?)];
    if !bonus.is_zero() {
        legs.push(ctx.platform.bonus_expense.leg(neg(bonus)?));
    }
    let references = TransactionReferences {
        top_up_id: Some(row.id.clone()),
        pack_id: Some(row.pack_id.clone()),
        validity: Some(row.validity),
        ..Default::default()
    };
    let expires_at = expiry_of(row.validity, now);
    let grant = |category, amount, source, funded_by: AccountRef| GrantSpec {
        category,
        amount,
        expires_at,
        source,
        source_id: Some(row.id.clone()),
        funded_by: Some(funded_by.id),
    };
    let mut grants = vec![grant(GrantCategory::Paid, credits, GrantSource::TopUp, ctx.platform.cash)];
    if !bonus.is_zero() {
        grants.push(grant(
            GrantCategory::Promotional,
            bonus,
            GrantSource::TopUpBonus,
            ctx.platform.bonus_expense,
        ));
    }
    let posted = ledger::post(
        tx,
        NewEntry {
            spend: None,
            kind: EntryKind::TopUp,
            legs,
            overdraft: Overdraft::Refuse,
            reverses: None,
            request_key,
            actor: Some(actor),
            memo: Some(&format!("receipt {receipt}")),
            metadata: serde_json::to_value(&references).unwrap_or_default(),
            grants: Grants::Open(grants),
        },
    )?;
    diesel::update(top_ups::table.find(&row.id))
        .set((top_ups::receipt_number.eq(receipt), top_ups::credited_entry_id.eq(posted.entry_id)))
        .execute(tx.conn())?;
    let pack_name = find_pack(ctx, &row.pack_id).map_or_else(|_| row.pack_id.clone(), |p| p.name.clone());
    super::invoices::issue_for_top_up(tx, ctx, row, receipt, &pack_name, stripe_tax, now)?;
    tracing::info!(top_up_id = %row.id, %total, receipt, "top-up credited");
    announce(tx, &row.id, EventType::TopUpPaid)?;
    Ok(true)
}

/// `POST /v1/admin/top-ups/{id}/settle`: an operator confirms the payment of
/// a manual order. Runs inside the idempotent request's transaction.
pub fn settle_manual(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    operator: &Caller,
    id: &str,
    request: &RequestKey,
) -> ServiceResult<Outcome<TopUp>> {
    let row = lock(tx, id)?;
    if row.status == TopUpStatus::AmountMismatch {
        return settle_at_paid_amount(tx, ctx, operator, row, request);
    }
    if row.method != TopUpMethod::Manual && row.paid_cents.is_none() {
        return Err(ServiceError::Conflict {
            kind: ErrorCode::NotManual,
            message: "this top-up is paid through Stripe Checkout and settles by its webhook".into(),
        });
    }
    if !credit(tx, ctx, &row, &[TopUpStatus::Pending], &operator.id, Some(request.as_str()), None)? {
        return Err(ServiceError::Conflict {
            kind: ErrorCode::TopUpNotPending,
            message: format!("top-up {id} is {}, not pending", row.status),
        });
    }
    diesel::update(top_ups::table.find(id)).set(top_ups::settled_by.eq(&operator.id)).execute(tx.conn())?;
    let row = load(tx, id)?;
    Ok(view(tx, row)?.into())
}

/// Settles an `amount_mismatch` order at what was paid: credits and bonus
/// in proportion to the paid amount (rounded down), and the order's amount
/// becomes the paid one (so a later refund takes back its share of that).
/// A payment in another currency cannot be valued: 409, reject it instead.
fn settle_at_paid_amount(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    operator: &Caller,
    row: TopUpRow,
    request: &RequestKey,
) -> ServiceResult<Outcome<TopUp>> {
    let paid = row.paid_cents.unwrap_or(0);
    if !row.paid_currency.as_deref().is_some_and(|c| c.eq_ignore_ascii_case(&row.currency)) {
        return Err(ServiceError::Conflict {
            kind: ErrorCode::CurrencyMismatch,
            message: format!(
                "top-up {} was paid in {}, not {}: it cannot be settled at the paid amount; reject it \
                 (and refund the payment in Stripe)",
                row.id,
                row.paid_currency.as_deref().unwrap_or("an unknown currency"),
                row.currency
            ),
        });
    }
    let credits = pro_rata(row.credits, paid, row.amount_cents);
    let bonus = pro_rata(row.bonus_credits, paid, row.amount_cents);
    if paid <= 0 || credits <= Credits::ZERO {
        return Err(ServiceError::Conflict {
            kind: ErrorCode::PaidAmountTooSmall,
            message: format!("top-up {}: the paid amount buys no credits; reject it", row.id),
        });
    }
    diesel::update(top_ups::table.find(&row.id).filter(top_ups::status.eq(TopUpStatus::AmountMismatch)))
        .set((
            top_ups::amount_cents.eq(paid),
            top_ups::credits.eq(credits),
            top_ups::bonus_credits.eq(bonus),
            top_ups::settled_by.eq(&operator.id),
        ))
        .execute(tx.conn())?;
    let settled = load(tx, &row.id)?;
    if !credit(tx, ctx, &settled, &[TopUpStatus::AmountMismatch], &operator.id, Some(request.as_str()), None)?
    {
        return Err(ServiceError::Internal(format!("top-up {} could not be settled", row.id)));
    }
    tracing::warn!(top_up_id = %row.id, paid_cents = paid, operator = %operator.id, "amount mismatch settled at the paid amount");
    let row = load(tx, &row.id)?;
    Ok(view(tx, row)?.into())
}

/// `POST /v1/admin/top-ups/{id}/reject`: an operator refuses an
/// `amount_mismatch` order; nothing is credited (the payment is refunded in
/// Stripe, whose `charge.refunded` then finds nothing credited).
pub fn reject_mismatch(
    tx: &mut WriteTx<'_>,
    operator: &Caller,
    id: &str,
    _request: &RequestKey,
) -> ServiceResult<Outcome<TopUp>> {
    let row = lock(tx, id)?;
    let n = diesel::update(top_ups::table.find(id).filter(top_ups::status.eq(TopUpStatus::AmountMismatch)))
        .set((
            top_ups::status.eq(TopUpStatus::Rejected),
            top_ups::settled_by.eq(&operator.id),
            top_ups::updated_at.eq(db::now()),
        ))
        .execute(tx.conn())?;
    if n == 0 {
        return Err(ServiceError::Conflict {
            kind: ErrorCode::TopUpNotMismatched,
            message: format!("top-up {id} is {}, not amount_mismatch", row.status),
        });
    }
    tracing::warn!(top_up_id = id, operator = %operator.id, "amount mismatch rejected");
    let row = load(tx, id)?;
    Ok(view(tx, row)?.into())
}

/// A page of top-ups.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopUpList {
    pub data: Vec<TopUp>,
    /// More follow: ask with `starting_after` = the last id.
    pub has_more: bool,
}

/// `GET /v1/admin/top-ups`: top-ups (of one status, if given) in id order,
/// keyset-paginated.
pub fn list_top_ups(
    conn: &mut DbConn,
    status: Option<&str>,
    limit: i64,
    starting_after: Option<&str>,
) -> ServiceResult<TopUpList> {
    if !(1..=100).contains(&limit) {
        return Err(ServiceError::Validation("limit must be 1 to 100".into()));
    }
    let mut query = top_ups::table.select(TopUpRow::as_select()).into_boxed();
    if let Some(status) = status {
        let status = status.parse::<TopUpStatus>().map_err(|_| {
            let all: Vec<&str> = TopUpStatus::ALL.iter().map(|s| s.as_str()).collect();
            ServiceError::Validation(format!("status '{status}' is not one of {}", all.join(", ")))
        })?;
        query = query.filter(top_ups::status.eq(status));
    }
    if let Some(cursor) = starting_after {
        let known: Option<String> = top_ups::table.find(cursor).select(top_ups::id).first(conn).optional()?;
        if known.is_none() {
            return Err(ServiceError::NotFound("top-up (starting_after)"));
        }
        query = query.filter(top_ups::id.gt(cursor.to_string()));
    }
    let mut rows: Vec<TopUpRow> = query.order(top_ups::id.asc()).limit(limit + 1).load(conn)?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    Ok(TopUpList { data: views(conn, rows)?, has_more })
}

/// `GET /v1/wallets/{id}/top-ups`: a wallet's top-ups (of one status, if
/// given), newest first, keyset-paginated; whoever may read the wallet.
pub fn list_wallet_top_ups(
    conn: &mut DbConn,
    caller: &Caller,
    wallet_id: &str,
    status: Option<&str>,
    limit: i64,
    starting_after: Option<&str>,
) -> ServiceResult<TopUpList> {
    if !(1..=100).contains(&limit) {
        return Err(ServiceError::Validation("limit must be 1 to 100".into()));
    }
    let status = status.map(parse_status).transpose()?;
    let wallet = load_for(conn, caller, wallet_id, Access::Read)?;
    let mut query = top_ups::table
        .filter(top_ups::wallet_account_id.eq(wallet.id))
        .select(TopUpRow::as_select())
        .into_boxed();
    if let Some(status) = status {
        query = query.filter(top_ups::status.eq(status));
    }
    if let Some(cursor) = starting_after {
        let at: Option<NaiveDateTime> = top_ups::table
            .find(cursor)
            .filter(top_ups::wallet_account_id.eq(wallet.id))
            .select(top_ups::created_at)
            .first(conn)
            .optional()?;
        let at = at.ok_or(ServiceError::NotFound("top-up (starting_after)"))?;
        query = query.filter(
            top_ups::created_at.lt(at).or(top_ups::created_at.eq(at).and(top_ups::id.lt(cursor.to_string()))),
        );
    }
    let mut rows: Vec<TopUpRow> =
        query.order((top_ups::created_at.desc(), top_ups::id.desc())).limit(limit + 1).load(conn)?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    Ok(TopUpList { data: views(conn, rows)?, has_more })
}

fn parse_status(status: &str) -> ServiceResult<TopUpStatus> {
    status.parse::<TopUpStatus>().map_err(|_| {
        let all: Vec<&str> = TopUpStatus::ALL.iter().map(|s| s.as_str()).collect();
        ServiceError::Validation(format!("status '{status}' is not one of {}", all.join(", ")))
    })
}

fn neg(c: Credits) -> ServiceResult<Credits> {
    c.checked_neg().ok_or_else(|| ServiceError::Internal("amount out of range".into()))
}

/// `checkout.session.completed`: a paid top-up Checkout credits the wallet;
/// an unpaid one (a delayed payment method) is remembered until its payment
/// settles. A subscription Checkout is only marked `complete` (the
/// subscription events set the plan).
pub fn checkout_completed(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    s: &CheckoutSession,
    event_id: &str,
) -> ServiceResult<EventOutcome> {
    if s.mode.as_deref() == Some("subscription") {
        return super::plans::subscription_checkout_ended(tx, s, true);
    }
    match s.payment_status.as_str() {
        "paid" => session_paid(tx, ctx, s, event_id),
        _ => session_seen(tx, s),
    }
}

/// `checkout.session.expired`: an abandoned top-up Checkout ends its order;
/// an abandoned subscription Checkout ends `expired`.
pub fn checkout_expired(tx: &mut WriteTx<'_>, s: &CheckoutSession) -> ServiceResult<EventOutcome> {
    if s.mode.as_deref() == Some("subscription") {
        return super::plans::subscription_checkout_ended(tx, s, false);
    }
    session_expired(tx, s)
}

/// `checkout.session.async_payment_failed`: the order fails.
pub fn async_payment_failed(tx: &mut WriteTx<'_>, s: &CheckoutSession) -> ServiceResult<EventOutcome> {
    let Some(row) = order_of_session(tx, s)? else { return Ok(EventOutcome::UnknownTopUp) };
    let n = diesel::update(top_ups::table.find(&row.id).filter(top_ups::status.eq(TopUpStatus::Pending)))
        .set((top_ups::status.eq(TopUpStatus::Failed), top_ups::updated_at.eq(db::now())))
        .execute(tx.conn())?;
    Ok(if n == 1 { EventOutcome::Failed } else { EventOutcome::NotPending })
}

/// The order a Checkout Session pays for: by metadata, then client reference.
fn order_of_session(tx: &mut WriteTx<'_>, s: &CheckoutSession) -> ServiceResult<Option<TopUpRow>> {
    let id = s
        .metadata
        .as_ref()
        .and_then(|m| m.get("top_up_id").cloned())
        .or_else(|| s.client_reference_id.clone());
    let Some(id) = id else { return Ok(None) };
    Ok(top_ups::table.find(&id).select(TopUpRow::as_select()).first(tx.conn()).optional()?)
}

/// Keeps the session's payment intent (an `unpaid` completion: the payment
/// settles later).
fn session_seen(tx: &mut WriteTx<'_>, s: &CheckoutSession) -> ServiceResult<EventOutcome> {
    let Some(row) = order_of_session(tx, s)? else { return Ok(EventOutcome::UnknownTopUp) };
    remember_payment_intent(tx, &row, s)?;
    Ok(EventOutcome::AwaitingPayment)
}

fn remember_payment_intent(tx: &mut WriteTx<'_>, row: &TopUpRow, s: &CheckoutSession) -> ServiceResult<()> {
    if let Some(pi) = &s.payment_intent {
        diesel::update(top_ups::table.find(&row.id))
            .set(top_ups::payment_intent_id.eq(pi.id()))
            .execute(tx.conn())?;
    }
    Ok(())
}

pub fn session_paid(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    s: &CheckoutSession,
    event_id: &str,
) -> ServiceResult<EventOutcome> {
    let Some(row) = order_of_session(tx, s)? else {
        tracing::warn!(session = %s.id, "paid Checkout Session for no known top-up");
        return Ok(EventOutcome::UnknownTopUp);
    };
    let row = lock(tx, &row.id)?;
    if matches!(row.status, TopUpStatus::AmountMismatch | TopUpStatus::Rejected) {
        // An operator decides (or decided) what this payment is worth.
        return Ok(EventOutcome::AmountMismatch);
    }
    let currency_ok = s.currency.as_deref().is_none_or(|c| c.eq_ignore_ascii_case(&row.currency));
    let stripe_tax = stripe_tax_of(s);
    // Tax Stripe added on top of the price is not part of the order's amount.
    let added_tax = stripe_tax.filter(|t| !t.inclusive).map_or(0, |t| t.tax_cents);
    if s.amount_total.map(|t| t - added_tax) != Some(row.amount_cents) || !currency_ok {
        tracing::error!(
            top_up_id = %row.id,
            expected_cents = row.amount_cents,
            paid_cents = ?s.amount_total,
            currency = ?s.currency,
            "amount mismatch: the payment does not match the order; held for an operator"
        );
        remember_payment_intent(tx, &row, s)?;
        let unpaid = [TopUpStatus::Pending, TopUpStatus::Expired];
        diesel::update(top_ups::table.find(&row.id).filter(top_ups::status.eq_any(unpaid)))
            .set((
                top_ups::status.eq(TopUpStatus::AmountMismatch),
                top_ups::paid_cents.eq(s.amount_total.unwrap_or(0)),
                top_ups::paid_currency.eq(s.currency.as_deref().unwrap_or("unknown").to_ascii_lowercase()),
                top_ups::updated_at.eq(db::now()),
            ))
            .execute(tx.conn())?;
        return Ok(EventOutcome::AmountMismatch);
    }
    remember_payment_intent(tx, &row, s)?;
    // An expired order paid late is still credited: the money was taken.
    let unpaid = [TopUpStatus::Pending, TopUpStatus::Expired];
    let credited = credit(tx, ctx, &row, &unpaid, &format!("stripe:{event_id}"), None, stripe_tax)?;
    Ok(if credited { EventOutcome::Credited } else { EventOutcome::AlreadyCredited })
}

/// An auto top-up's PaymentIntent succeeded (`payment_intent.succeeded`):
/// credits its order exactly as a paid Checkout does (receipt, grants,
/// validity, invoice), once; a payment of another amount or currency is held
/// for an operator (`amount_mismatch`). A `failed` order is still credited:
/// the money was taken (e.g. the customer completed authentication later).
pub(crate) fn payment_intent_paid(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    top_up_id: &str,
    payment_intent: &str,
    paid_cents: i64,
    currency: &str,
    event_id: &str,
) -> ServiceResult<EventOutcome> {
    let row = lock(tx, top_up_id)?;
    if matches!(row.status, TopUpStatus::AmountMismatch | TopUpStatus::Rejected) {
        return Ok(EventOutcome::AmountMismatch);
    }
    diesel::update(top_ups::table.find(&row.id))
        .set(top_ups::payment_intent_id.eq(payment_intent))
        .execute(tx.conn())?;
    let unpaid = [TopUpStatus::Pending, TopUpStatus::Failed, TopUpStatus::Expired];
    if paid_cents != row.amount_cents || !currency.eq_ignore_ascii_case(&row.currency) {
        tracing::error!(
            top_up_id = %row.id, expected_cents = row.amount_cents, paid_cents, currency,
            "amount mismatch: the payment does not match the order; held for an operator"
        );
        diesel::update(top_ups::table.find(&row.id).filter(top_ups::status.eq_any(unpaid)))
            .set((
                top_ups::status.eq(TopUpStatus::AmountMismatch),
                top_ups::paid_cents.eq(paid_cents),
                top_ups::paid_currency.eq(currency.to_ascii_lowercase()),
                top_ups::updated_at.eq(db::now()),
            ))
            .execute(tx.conn())?;
        return Ok(EventOutcome::AmountMismatch);
    }
    let credited = credit(tx, ctx, &row, &unpaid, &format!("stripe:{event_id}"), None, None)?;
    Ok(if credited { EventOutcome::Credited } else { EventOutcome::AlreadyCredited })
}

/// The tax Stripe Tax computed on a Checkout Session, if any: added to the
/// price when the subtotal and the tax make the total, else included.
fn stripe_tax_of(s: &CheckoutSession) -> Option<StripeTax> {
    let tax = s.total_details.as_ref().and_then(|t| t.amount_tax).filter(|t| *t > 0)?;
    let total = s.amount_total?;
    if tax > total {
        tracing::warn!(session = %s.id, tax, total, "Checkout Session tax above its total: not shown on the invoice");
        return None;
    }
    let added = s.amount_subtotal.is_some_and(|sub| sub.checked_add(tax) == Some(total));
    Some(StripeTax { total_cents: total, tax_cents: tax, inclusive: !added })
}

/// `checkout.session.expired`: the person abandoned Checkout; a pending
/// order ends `expired` (a late payment still credits it).
fn session_expired(tx: &mut WriteTx<'_>, s: &CheckoutSession) -> ServiceResult<EventOutcome> {
    let Some(row) = order_of_session(tx, s)? else { return Ok(EventOutcome::UnknownTopUp) };
    let n = diesel::update(top_ups::table.find(&row.id).filter(top_ups::status.eq(TopUpStatus::Pending)))
        .set((top_ups::status.eq(TopUpStatus::Expired), top_ups::updated_at.eq(db::now())))
        .execute(tx.conn())?;
    if n == 1 {
        announce(tx, &row.id, EventType::TopUpExpired)?;
    }
    Ok(if n == 1 { EventOutcome::Expired } else { EventOutcome::NotPending })
}

/// The order this payment paid for, locked until the transaction ends and
/// read after the lock: refund and dispute events for one payment run one
/// after the other, each seeing what the previous one took back. A no-op
/// `UPDATE` takes the row lock on PostgreSQL (diesel's `FOR UPDATE` does not
/// go through the multi-backend connection); on SQLite the write
/// transaction (`BEGIN IMMEDIATE`) already runs alone.
fn locked_order_of_payment(
    tx: &mut WriteTx<'_>,
    payment_intent: Option<&str>,
) -> ServiceResult<Option<TopUpRow>> {
    let Some(pi) = payment_intent else { return Ok(None) };
    let id: Option<String> = top_ups::table
        .filter(top_ups::payment_intent_id.eq(pi))
        .select(top_ups::id)
        .order(top_ups::created_at.asc())
        .first(tx.conn())
        .optional()?;
    let Some(id) = id else { return Ok(None) };
    lock(tx, &id).map(Some)
}

/// Locks a top-up row for the rest of the transaction and reads it.
fn lock(tx: &mut WriteTx<'_>, id: &str) -> ServiceResult<TopUpRow> {
    diesel::update(top_ups::table.find(id))
        .set(top_ups::updated_at.eq(top_ups::updated_at))
        .execute(tx.conn())?;
    load(tx, id)
}

/// `amount` x `part / whole`, rounded down (more than `amount` when `part`
/// exceeds `whole`).
fn pro_rata(amount: Credits, part: i64, whole: i64) -> Credits {
    if whole <= 0 {
        return Credits::ZERO;
    }
    amount.scaled(part.max(0), whole).unwrap_or(Credits::MAX)
}

/// The share `part / whole` of `amount`, rounded down; all of it when
/// `part >= whole`.
fn share_of(amount: Credits, part: i64, whole: i64) -> Credits {
    if part >= whole {
        return amount;
    }
    amount.scaled(part.max(0), whole).unwrap_or(Credits::ZERO)
}

fn add(a: Credits, b: Credits) -> ServiceResult<Credits> {
    a.checked_add(b).ok_or_else(|| ServiceError::Internal("top-up amounts out of range".into()))
}

fn sub(a: Credits, b: Credits) -> ServiceResult<Credits> {
    a.checked_sub(b).ok_or_else(|| ServiceError::Internal("top-up amounts out of range".into()))
}

/// Who takes credits back, and what their entry carries.
#[derive(Clone, Copy)]
struct TakenBy<'a> {
    actor: &'a str,
    memo: Option<&'a str>,
    request_key: Option<&'a str>,
}

impl<'a> TakenBy<'a> {
    fn stripe(actor: &'a str) -> Self {
        TakenBy { actor, memo: None, request_key: None }
    }
}

/// Posts a reversal of `credits` + `bonus` from the wallet (which may go
/// below zero; it is then frozen).
fn reverse(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    row: &TopUpRow,
    kind: EntryKind,
    credits: Credits,
    bonus: Credits,
    by: TakenBy<'_>,
) -> ServiceResult<()> {
    let TakenBy { actor, memo, request_key } = by;
    let total = add(credits, bonus)?;
    let mut legs = vec![row.wallet().leg(neg(total)?), ctx.platform.cash.leg(credits)];
    if !bonus.is_zero() {
        legs.push(ctx.platform.bonus_expense.leg(bonus));
    }
    let references = TransactionReferences {
        top_up_id: Some(row.id.clone()),
        pack_id: Some(row.pack_id.clone()),
        ..Default::default()
    };
    // The credits come back from the top-up's own grants first (its credits
    // from its paid grant, its bonus from its promotional one); what those
    // no longer hold (spent) from the wallet's other grants in order.
    let own = own_grants(tx, row)?;
    let first = [(own.paid, credits), (own.bonus, bonus)]
        .into_iter()
        .filter_map(|(grant, amount)| grant.map(|g| (g, amount)))
        .collect();
    let posted = ledger::post(
        tx,
        NewEntry {
            spend: None,
            kind,
            legs,
            overdraft: Overdraft::AllowForReversal,
            reverses: row.credited_entry_id,
            request_key,
            actor: Some(actor),
            memo,
            metadata: serde_json::to_value(&references).unwrap_or_default(),
            grants: Grants::DrawFirst(first),
        },
    )?;
    let balance = posted.leg_of(row.wallet_account_id).and_then(|l| l.balance_after).unwrap_or_default();
    if balance.is_negative() {
        freeze(tx, ctx, row.wallet_account_id)?;
        tracing::warn!(wallet_id = %row.wallet_id, %balance, "wallet below zero after a reversal: frozen");
    }
    Ok(())
}

/// When credits of `validity` credited at `at` expire (never for lifetime).
fn expiry_of(validity: Validity, at: NaiveDateTime) -> Option<NaiveDateTime> {
    validity.duration().and_then(|d| at.checked_add_signed(d))
}

/// The grants a paid top-up opened: its credits and its bonus.
struct OwnGrants {
    paid: Option<i64>,
    bonus: Option<i64>,
}

fn own_grants(conn: &mut DbConn, row: &TopUpRow) -> ServiceResult<OwnGrants> {
    use crate::db::schema::credit_grants as g;
    let rows: Vec<(i64, GrantSource)> = g::table
        .filter(g::source_id.eq(&row.id))
        .filter(g::account_id.eq(row.wallet_account_id))
        .select((g::id, g::source))
        .load(conn)?;
    let of = |source| rows.iter().find(|(_, s)| *s == source).map(|(id, _)| *id);
    Ok(OwnGrants { paid: of(GrantSource::TopUp), bonus: of(GrantSource::TopUpBonus) })
}

/// Freezes the wallet; `wallet.frozen` when it was not frozen yet.
fn freeze(tx: &mut WriteTx<'_>, ctx: &Ctx, account_id: i64) -> ServiceResult<()> {
    let changed = diesel::update(accounts::table.find(account_id).filter(accounts::frozen.eq(false)))
        .set(accounts::frozen.eq(true))
        .execute(tx.conn())?;
    if changed == 1 {
        let wallet = accounts::table.find(account_id).select(AccountRow::as_select()).first(tx.conn())?;
        let data = events::wallet_data(tx, ctx, &wallet)?;
        events::record(tx, EventType::WalletFrozen, &events::Subject::wallet(&wallet), &data)?;
    }
    Ok(())
}

/// Records a top-up event with the order as the API shows it now.
fn announce(tx: &mut WriteTx<'_>, id: &str, event_type: EventType) -> ServiceResult<()> {
    let row = load(tx, id)?;
    let wallet =
        accounts::table.find(row.wallet_account_id).select(AccountRow::as_select()).first(tx.conn())?;
    let top_up = view(tx, row)?;
    events::record(tx, event_type, &events::Subject::wallet(&wallet), &top_up)?;
    Ok(())
}

/// `charge.refunded`: takes back the refunded share of what was credited
/// (Stripe sends the cumulative `amount_refunded`, so a repeated or late
/// event takes back nothing twice).
pub fn refund(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    c: &StripeCharge,
    event_id: &str,
) -> ServiceResult<EventOutcome> {
    let Some(row) = locked_order_of_payment(tx, c.payment_intent.as_ref().map(|p| p.id()))? else {
        return Ok(EventOutcome::UnknownTopUp);
    };
    if row.credited_entry_id.is_none() {
        return Ok(EventOutcome::NotCredited);
    }
    let refunded = super::invoices::order_cents_of_payment(tx, &row, c.amount_refunded)?;
    if refunded <= row.refunded_cents {
        return Ok(EventOutcome::AlreadyRefunded);
    }
    let actor = format!("stripe:{event_id}");
    let full = take_back_to(tx, ctx, &row, refunded, Some(c.amount_refunded), TakenBy::stripe(&actor))?;
    Ok(if full { EventOutcome::Refunded } else { EventOutcome::PartiallyRefunded })
}

/// What the wallet gives back once `refunded` cents of the payment are
/// refunded in all: the refunded share of the credits and of the bonus
/// (each rounded down), less what was taken back already.
fn take_back_for(row: &TopUpRow, refunded: i64) -> ServiceResult<(Credits, Credits)> {
    let refunded = refunded.min(row.amount_cents);
    let credits = sub(share_of(row.credits, refunded, row.amount_cents), row.reversed_credits)?;
    let bonus = sub(share_of(row.bonus_credits, refunded, row.amount_cents), row.reversed_bonus)?;
    Ok((credits.max(Credits::ZERO), bonus.max(Credits::ZERO)))
}

/// Brings a locked top-up to `refunded` cents refunded in all (the
/// movement of `charge.refunded`, and of an operator's refund): takes back
/// [`take_back_for`] from the wallet, which may go below zero (then it is
/// frozen), and records the amounts. Nothing when `refunded` is not more
/// than what is recorded. Returns whether the payment is refunded in full.
/// `paid_refunded`: the payment's refunded total as Stripe reports it, for
/// the credit note (it may include tax Stripe added to the order).
fn take_back_to(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    row: &TopUpRow,
    refunded: i64,
    paid_refunded: Option<i64>,
    by: TakenBy<'_>,
) -> ServiceResult<bool> {
    let refunded = refunded.min(row.amount_cents);
    if refunded <= row.refunded_cents {
        return Ok(row.refunded_cents >= row.amount_cents);
    }
    let (credits, bonus) = take_back_for(row, refunded)?;
    let reason = by.memo.map_or_else(|| "refund of the payment".to_string(), str::to_string);
    if add(credits, bonus)? > Credits::ZERO {
        reverse(tx, ctx, row, EntryKind::Refund, credits, bonus, by)?;
    }
    super::invoices::issue_credit_note(tx, ctx, row, refunded, paid_refunded, &reason)?;
    let full = refunded >= row.amount_cents;
    let status = if full && row.status != TopUpStatus::Disputed { TopUpStatus::Refunded } else { row.status };
    diesel::update(top_ups::table.find(&row.id))
        .set((
            top_ups::refunded_cents.eq(refunded),
            top_ups::reversed_credits.eq(add(row.reversed_credits, credits)?),
            top_ups::reversed_bonus.eq(add(row.reversed_bonus, bonus)?),
            top_ups::status.eq(status),
            top_ups::updated_at.eq(db::now()),
        ))
        .execute(tx.conn())?;
    announce(tx, &row.id, EventType::TopUpRefunded)?;
    Ok(full)
}

/// An operator's refund of a top-up, decided under the top-up's lock.
#[derive(Clone, Debug)]
pub struct RefundPlan {
    pub top_up_id: String,
    /// The payment to refund at Stripe; None for a manual top-up (the
    /// refund is recorded only).
    pub payment_intent: Option<String>,
    pub cents: i64,
    /// Cents refunded in all once this refund is made.
    pub refunded_after: i64,
    /// Credits (bonus included) this refund takes back.
    pub takes: Credits,
}

/// What an operator's refund did.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopUpRefund {
    /// Stripe's refund (`re_...`); null for a manual top-up (recorded only).
    pub refund_id: Option<String>,
    /// USD returned to the payer.
    #[schema(value_type = String, example = "5.00")]
    pub amount_usd: UsdCents,
    /// Credits (bonus included) taken back from the wallet.
    #[schema(value_type = String, example = "55")]
    pub credits_taken_back: Credits,
    pub top_up: TopUp,
}

/// The most cents of the top-up's payment that can still be refunded
/// without taking back more than the wallet holds: the largest `c` (at most
/// what is not refunded yet) whose [`take_back_for`] fits in `balance`.
fn refundable_cents(row: &TopUpRow, balance: Credits) -> ServiceResult<i64> {
    let fits = |c: i64| -> ServiceResult<bool> {
        let (credits, bonus) = take_back_for(row, row.refunded_cents + c)?;
        Ok(credits.checked_add(bonus).is_some_and(|taken| taken <= balance))
    };
    let (mut lo, mut hi) = (0, (row.amount_cents - row.refunded_cents).max(0));
    if !fits(lo)? {
        return Ok(0);
    }
    // The taken-back amount grows with `c`: the largest `c` that fits.
    while lo < hi {
        let mid = lo + (hi - lo + 1) / 2;
        if fits(mid)? {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Ok(lo)
}

/// First step of `POST /v1/admin/top-ups/{id}/refund`: checks under the
/// top-up's lock that it is paid and that `amount` (all that is refundable
/// when absent) takes back no more than is unspent: at most what the
/// top-up credited less what was taken back, and at most the wallet's
/// balance.
pub fn plan_refund(conn: &mut DbConn, id: &str, amount: Option<UsdCents>) -> ServiceResult<RefundPlan> {
    db::write_tx(conn, |tx| {
        let row = lock(tx, id)?;
        let stripe = row.method == TopUpMethod::Stripe;
        if row.status != TopUpStatus::Paid
            || row.credited_entry_id.is_none()
            || (stripe && row.payment_intent_id.is_none())
        {
            return Err(ServiceError::Conflict {
                kind: ErrorCode::TopUpNotPaid,
                message: format!("top-up {id} is {}, not paid: there is nothing to refund", row.status),
            });
        }
        let balance = ledger::balance_of(tx, row.wallet())?;
        let most = refundable_cents(&row, balance)?;
        let cents = amount.map(UsdCents::cents).unwrap_or(most);
        if cents > most || cents <= 0 {
            return Err(ServiceError::Refused {
                kind: ErrorCode::RefundExceedsUnspent,
                message: format!(
                    "at most {} USD of top-up {id} can be refunded: its credits still unspent in the wallet",
                    UsdCents::new(most)
                ),
            });
        }
        let (credits, bonus) = take_back_for(&row, row.refunded_cents + cents)?;
        Ok(RefundPlan {
            top_up_id: row.id.clone(),
            payment_intent: if stripe { row.payment_intent_id.clone() } else { None },
            cents,
            refunded_after: row.refunded_cents + cents,
            takes: add(credits, bonus)?,
        })
    })
}

/// Last step of `POST /v1/admin/top-ups/{id}/refund`: takes the credits
/// back as `charge.refunded` would for the refunded total Stripe reports
/// (so that event, when it comes, finds nothing more to do); recorded with
/// the operator, the reason and Stripe's refund id.
pub fn complete_refund(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    operator: &Caller,
    plan: &RefundPlan,
    stripe_refund: Option<&RefundRef>,
    reason: &str,
    request: &RequestKey,
) -> ServiceResult<Outcome<TopUpRefund>> {
    let row = lock(tx, &plan.top_up_id)?;
    let refunded = stripe_refund
        .and_then(|r| r.charge_amount_refunded)
        .unwrap_or(plan.refunded_after)
        .max(plan.refunded_after);
    let memo = match stripe_refund {
        Some(r) => format!("refund {}: {reason}", r.id),
        None => format!("refund (manual top-up): {reason}"),
    };
    let by = TakenBy { actor: &operator.id, memo: Some(&memo), request_key: Some(request.as_str()) };
    take_back_to(tx, ctx, &row, refunded, stripe_refund.and_then(|r| r.charge_amount_refunded), by)?;
    tracing::warn!(top_up_id = %row.id, cents = plan.cents, operator = %operator.id, "top-up refunded by an operator");
    let after = load(tx, &row.id)?;
    let top_up = view(tx, after)?;
    Ok(TopUpRefund {
        refund_id: stripe_refund.map(|r| r.id.clone()),
        amount_usd: UsdCents::new(plan.cents),
        credits_taken_back: plan.takes,
        top_up,
    }
    .into())
}

/// `charge.dispute.created`: takes back all that is still credited and
/// freezes the wallet.
pub fn dispute_created(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    d: &Dispute,
    event_id: &str,
) -> ServiceResult<EventOutcome> {
    let Some(row) = locked_order_of_payment(tx, d.payment_intent.as_ref().map(|p| p.id()))? else {
        return Ok(EventOutcome::UnknownTopUp);
    };
    if row.credited_entry_id.is_none() {
        return Ok(EventOutcome::NotCredited);
    }
    if row.dispute_id.is_some() {
        return Ok(EventOutcome::AlreadyDisputed);
    }
    let credits = sub(row.credits, row.reversed_credits)?;
    let bonus = sub(row.bonus_credits, row.reversed_bonus)?;
    if add(credits, bonus)? > Credits::ZERO {
        let actor = format!("stripe:{event_id}");
        reverse(tx, ctx, &row, EntryKind::Dispute, credits, bonus, TakenBy::stripe(&actor))?;
    }
    freeze(tx, ctx, row.wallet_account_id)?;
    diesel::update(top_ups::table.find(&row.id))
        .set((
            top_ups::status.eq(TopUpStatus::Disputed),
            top_ups::dispute_id.eq(&d.id),
            top_ups::disputed_credits.eq(credits),
            top_ups::disputed_bonus.eq(bonus),
            top_ups::reversed_credits.eq(row.credits),
            top_ups::reversed_bonus.eq(row.bonus_credits),
            top_ups::updated_at.eq(db::now()),
        ))
        .execute(tx.conn())?;
    tracing::warn!(top_up_id = %row.id, wallet_id = %row.wallet_id, "dispute opened: credits taken back, wallet frozen");
    announce(tx, &row.id, EventType::TopUpDisputed)?;
    Ok(EventOutcome::Disputed)
}

/// `charge.dispute.closed`: when won (or an inquiry closed without a
/// chargeback, `warning_closed`), gives back what the dispute still holds:
/// what it took, less what refunds made since then keep. The top-up is
/// then `refunded` if refunded in full, else `paid`. Lost: the dispute keeps
/// it and the top-up stays `disputed`. The wallet stays frozen until an
/// operator unfreezes it.
pub fn dispute_closed(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    d: &Dispute,
    event_id: &str,
) -> ServiceResult<EventOutcome> {
    let Some(row) = locked_order_of_payment(tx, d.payment_intent.as_ref().map(|p| p.id()))? else {
        return Ok(EventOutcome::UnknownTopUp);
    };
    if row.dispute_id.as_deref() != Some(d.id.as_str()) || row.status != TopUpStatus::Disputed {
        return Ok(EventOutcome::NotDisputed);
    }
    if d.status != "won" && d.status != "warning_closed" {
        return Ok(EventOutcome::DisputeLost);
    }
    // What stays taken back: the refunded share, or what was taken before
    // the dispute, whichever is more.
    let refunded_credits = share_of(row.credits, row.refunded_cents, row.amount_cents);
    let refunded_bonus = share_of(row.bonus_credits, row.refunded_cents, row.amount_cents);
    let kept_credits =
        refunded_credits.max(sub(row.reversed_credits, row.disputed_credits)?).min(row.reversed_credits);
    let kept_bonus = refunded_bonus.max(sub(row.reversed_bonus, row.disputed_bonus)?).min(row.reversed_bonus);
    let (credits, bonus) = (sub(row.reversed_credits, kept_credits)?, sub(row.reversed_bonus, kept_bonus)?);
    let status =
        if row.refunded_cents >= row.amount_cents { TopUpStatus::Refunded } else { TopUpStatus::Paid };
    let claimed =
        diesel::update(top_ups::table.find(&row.id).filter(top_ups::status.eq(TopUpStatus::Disputed)))
            .set((
                top_ups::status.eq(status),
                top_ups::disputed_credits.eq(Credits::ZERO),
                top_ups::disputed_bonus.eq(Credits::ZERO),
                top_ups::reversed_credits.eq(kept_credits),
                top_ups::reversed_bonus.eq(kept_bonus),
                top_ups::updated_at.eq(db::now()),
            ))
            .execute(tx.conn())?;
    if claimed == 1 && add(credits, bonus)? > Credits::ZERO {
        // It reverses the dispute's reversal (ledger verify follows the
        // chain to check what the top-up has lost in all).
        let dispute_entry: Option<i64> = journal_entries::table
            .filter(journal_entries::reverses_entry_id.eq(row.credited_entry_id))
            .filter(journal_entries::kind.eq(EntryKind::Dispute.as_str()))
            .select(journal_entries::id)
            .order(journal_entries::id.desc())
            .first(tx.conn())
            .optional()?;
        let total = add(credits, bonus)?;
        let mut legs = vec![row.wallet().leg(total), ctx.platform.cash.leg(neg(credits)?)];
        if !bonus.is_zero() {
            legs.push(ctx.platform.bonus_expense.leg(neg(bonus)?));
        }
        ledger::post(
            tx,
            NewEntry {
                spend: None,
                kind: EntryKind::DisputeWon,
                legs,
                overdraft: Overdraft::Refuse,
                reverses: dispute_entry,
                request_key: None,
                actor: Some(&format!("stripe:{event_id}")),
                memo: Some("dispute won"),
                metadata: serde_json::to_value(&TransactionReferences {
                    top_up_id: Some(row.id.clone()),
                    pack_id: Some(row.pack_id.clone()),
                    ..Default::default()
                })
                .unwrap_or_default(),
                // Back onto the grants the dispute took them from.
                grants: Grants::Undo(dispute_entry),
            },
        )?;
    }
    Ok(EventOutcome::DisputeWon)
}

#[cfg(test)]
mod tests {
    use super::share_of;
    use crate::domain::Credits;

    #[test]
    fn refund_shares_round_down_and_full_is_exact() {
        let c = Credits::from_micros;
        assert_eq!(share_of(c(50_000_000), 200, 500), c(20_000_000));
        assert_eq!(share_of(c(50_000_000), 1, 3), c(16_666_666));
        assert_eq!(share_of(c(50_000_000), 500, 500), c(50_000_000));
        assert_eq!(share_of(c(50_000_000), 900, 500), c(50_000_000));
        assert_eq!(share_of(c(7), 0, 500), c(0));
    }
}
