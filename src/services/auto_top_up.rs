//! Auto top-up: a wallet's settings (`PUT /v1/wallets/{id}/auto-top-up`),
//! the payment method a setup Checkout saved, and the orders recorded when
//! a movement left the balance below the threshold (by `ledger::post`, in
//! the movement's transaction). The order is paid by an off-session
//! PaymentIntent that `crate::flows::auto_top_up` sends; the wallet is
//! credited only by the `payment_intent.succeeded` webhook, through the
//! same settlement as a Checkout top-up.
//!
//! The state stays on rows (the order's status and failure reason, the
//! wallet's consecutive failures and `disabled_reason`): three failures in
//! a row turn auto top-up off; a success resets the count.

use diesel::prelude::*;
use serde::Serialize;
use utoipa::ToSchema;

use super::events::{self, EventType, Subject};
use super::stripe_events::EventOutcome;
use super::wallets::{load_for, Access, Wallet};
use super::{Caller, Ctx, ErrorCode, ServiceError, ServiceResult};
use crate::db::auto_top_ups::{self as rows, AutoTopUpOrderRow, WalletAutoTopUpRow};
use crate::db::models::AccountRow;
use crate::db::schema::{accounts, auto_top_up_orders};
use crate::db::{self, DbConn, WriteTx};
use crate::domain::ids::new_id;
use crate::domain::{AutoTopUpStatus, Credits, Validity};
use crate::stripe::webhook::{CheckoutSession, PaymentIntent};
use crate::stripe::{OffSessionPayment, PaymentIntentRef, SetupIntentRef};

/// Consecutive failed payments after which auto top-up turns itself off.
pub const MAX_CONSECUTIVE_FAILURES: i32 = 3;

/// The pause after a failed payment before the wallet orders again: this
/// after the first failure in a row, doubling with each further one (see
/// [`pause_after`]).
const FIRST_PAUSE: chrono::Duration = chrono::Duration::hours(1);

/// The longest pause after failed payments.
const LONGEST_PAUSE: chrono::Duration = chrono::Duration::hours(24);

/// How long a wallet waits before ordering again after its `failures`-th
/// failed payment in a row: 1 h, 2 h, 4 h, ... at most 24 h.
pub fn pause_after(failures: i32) -> chrono::Duration {
    let doublings = failures.saturating_sub(1).clamp(0, 5) as u32;
    FIRST_PAUSE.checked_mul(1 << doublings).unwrap_or(LONGEST_PAUSE).min(LONGEST_PAUSE)
}

/// How long an instance may hold an order while it asks Stripe for the
/// payment; past it, another instance may retry (the same idempotency key:
/// the same PaymentIntent).
const SEND_LEASE_SECS: i64 = 120;

/// A wallet's auto top-up, as shown on the wallet.
#[derive(Debug, Serialize, ToSchema)]
pub struct AutoTopUp {
    /// Whether a payment is made when the balance falls below `threshold`.
    pub enabled: bool,
    /// Below this many available credits, a top-up of `pack_id` is bought.
    #[schema(value_type = Option<String>, example = "10")]
    pub threshold: Option<Credits>,
    /// The credit pack bought.
    pub pack_id: Option<String>,
    /// The validity of the credits bought.
    pub validity: Option<Validity>,
    /// Whether a card is saved for off-session payments (its Stripe id is
    /// never shown).
    pub payment_method_on_file: bool,
    /// Failed payments in a row (reset by a success); at 3 auto top-up
    /// turns itself off.
    pub consecutive_failures: i32,
    /// Why auto top-up turned itself off, until it is enabled again.
    pub disabled_reason: Option<String>,
}

pub fn view(row: &WalletAutoTopUpRow) -> AutoTopUp {
    AutoTopUp {
        enabled: row.enabled,
        threshold: row.threshold,
        pack_id: row.pack_id.clone(),
        validity: row.validity,
        payment_method_on_file: row.stripe_payment_method_id.is_some(),
        consecutive_failures: row.failures,
        disabled_reason: row.disabled_reason.clone(),
    }
}

/// An auto top-up order, as `auto_top_up.failed` carries it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AutoTopUpOrder {
    /// `ato_` id (the idempotency key of its PaymentIntent).
    #[schema(example = "ato_6f1c0d6c2d0e4c44a3d8d2f5b8a1e9c2")]
    pub id: String,
    /// The `wal_` id of the wallet it tops up.
    pub wallet_id: String,
    pub status: AutoTopUpStatus,
    /// Why it failed or was canceled: Stripe's decline code, else its error
    /// code or message (e.g. `insufficient_funds`, `authentication_required`).
    #[schema(example = "insufficient_funds")]
    pub failure_reason: Option<String>,
    /// The wallet's failed payments in a row, this one included; at 3 auto
    /// top-up turns itself off.
    pub consecutive_failures: i32,
    /// The top-up it pays (null when none was made yet).
    pub top_up: Option<super::topups::TopUp>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// An order as shown, read in the caller's transaction.
fn order_view(conn: &mut DbConn, order_id: &str) -> ServiceResult<AutoTopUpOrder> {
    let order = rows::order(conn, order_id)?.ok_or(ServiceError::NotFound("auto top-up order"))?;
    let wallet = rows::wallet_settings(conn, order.wallet_account_id)?;
    let top_up = order.top_up_id.as_deref().map(|id| super::topups::view_of(conn, id)).transpose()?;
    Ok(AutoTopUpOrder {
        id: order.id,
        wallet_id: wallet.public_id.unwrap_or_default(),
        status: order.status,
        failure_reason: order.failure_reason,
        consecutive_failures: wallet.failures,
        top_up,
        created_at: order.created_at.and_utc(),
        updated_at: order.updated_at.and_utc(),
    })
}

/// Whose an auto top-up event is: the wallet's owner, with the wallet.
fn subject(wallet: &WalletAutoTopUpRow) -> Subject {
    Subject {
        owner_type: wallet.owner_type,
        owner_id: wallet.owner_id.clone(),
        wallet_id: wallet.public_id.clone(),
    }
}

/// The auto top-up of a wallet's row, as shown.
pub fn of_wallet(conn: &mut DbConn, account_id: i64) -> ServiceResult<AutoTopUp> {
    Ok(view(&rows::wallet_settings(conn, account_id)?))
}

/// What `PUT /v1/wallets/{id}/auto-top-up` sets.
#[derive(Debug, Clone)]
pub struct AutoTopUpSettings {
    pub threshold: Credits,
    pub pack_id: String,
    /// The pack's default validity when `None`.
    pub validity: Option<Validity>,
    pub enabled: bool,
}

/// `PUT /v1/wallets/{id}/auto-top-up` (the owner, or an org owner/admin):
/// checks the settings (pack on sale with that validity, threshold above
/// zero, a saved payment method before enabling), stores them, and when
/// enabling resets the failure count. Enabling with the available balance
/// already below the threshold records an order at once.
pub fn set(
    conn: &mut DbConn,
    ctx: &Ctx,
    caller: &Caller,
    wallet_id: &str,
    settings: &AutoTopUpSettings,
) -> ServiceResult<Wallet> {
    if !settings.threshold.is_positive() {
        return Err(ServiceError::Validation("threshold must be above zero".into()));
    }
    let pack = super::topups::find_pack(ctx, &settings.pack_id)?;
    let validity = settings.validity.unwrap_or_else(|| pack.default_validity());
    if pack.price_of(validity).is_none() {
        let on_sale: Vec<&str> = pack.prices.iter().map(|(v, _)| v.as_str()).collect();
        return Err(ServiceError::Validation(format!(
            "pack '{}' is not sold with validity '{validity}' (on sale: {})",
            pack.id,
            on_sale.join(", ")
        )));
    }
    db::write_tx(conn, |tx| {
        let wallet = load_for(tx, caller, wallet_id, Access::Manage)?;
        let current = rows::wallet_settings(tx, wallet.id)?;
        if settings.enabled && current.stripe_payment_method_id.is_none() {
            return Err(ServiceError::Conflict {
                kind: ErrorCode::PaymentMethodRequired,
                message:
                    "save a card first (POST /v1/wallets/{id}/payment-method) before enabling auto top-up"
                        .into(),
            });
        }
        let threshold = Some(settings.threshold.micros());
        if settings.enabled {
            diesel::update(accounts::table.find(wallet.id))
                .set((
                    accounts::auto_top_up_enabled.eq(true),
                    accounts::auto_top_up_threshold.eq(threshold),
                    accounts::auto_top_up_pack_id.eq(Some(&pack.id)),
                    accounts::auto_top_up_validity.eq(Some(validity.as_str())),
                    accounts::auto_top_up_failures.eq(0),
                    accounts::auto_top_up_disabled_reason.eq(None::<String>),
                    accounts::auto_top_up_retry_after.eq(None::<chrono::NaiveDateTime>),
                ))
                .execute(tx.conn())?;
            let below = wallet.balance.is_some_and(|b| b < settings.threshold);
            if below && !wallet.frozen && rows::record_open_order(tx, wallet.id, &new_id("ato"))? {
                tracing::info!(wallet_id, "auto top-up enabled below its threshold: order recorded");
            }
        } else {
            diesel::update(accounts::table.find(wallet.id))
                .set((
                    accounts::auto_top_up_enabled.eq(false),
                    accounts::auto_top_up_threshold.eq(threshold),
                    accounts::auto_top_up_pack_id.eq(Some(&pack.id)),
                    accounts::auto_top_up_validity.eq(Some(validity.as_str())),
                ))
                .execute(tx.conn())?;
        }
        let row = accounts::table.find(wallet.id).select(AccountRow::as_select()).first(tx.conn())?;
        super::wallets::view(tx, ctx, &row)
    })
}

/// The wallet a setup Checkout was opened for, with its saved customer:
/// first step of `POST /v1/wallets/{id}/payment-method`.
pub fn wallet_for_setup(
    conn: &mut DbConn,
    caller: &Caller,
    wallet_id: &str,
) -> ServiceResult<WalletAutoTopUpRow> {
    let wallet = load_for(conn, caller, wallet_id, Access::Manage)?;
    Ok(rows::wallet_settings(conn, wallet.id)?)
}

/// A setup Checkout opened for a wallet.
#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentMethodSetup {
    pub wallet_id: String,
    /// Where the person saves a card (Stripe Checkout, setup mode). The
    /// card is on file once Stripe's `checkout.session.completed` arrives.
    pub checkout_url: String,
}

/// `checkout.session.completed` in setup mode: keeps the customer and the
/// payment method (from the SetupIntent, asked for before the event's
/// transaction) on the wallet named in the session's metadata. A new card
/// starts a fresh count of failures.
pub fn setup_completed(
    tx: &mut WriteTx<'_>,
    s: &CheckoutSession,
    intent: Option<&SetupIntentRef>,
) -> ServiceResult<EventOutcome> {
    let wallet_id = s
        .metadata
        .as_ref()
        .and_then(|m| m.get("wallet_id").cloned())
        .or_else(|| s.client_reference_id.clone());
    let Some(wallet_id) = wallet_id else { return Ok(EventOutcome::UnknownCheckout) };
    let Ok(wallet) = super::wallets::find_by_public_id(tx, &wallet_id) else {
        tracing::warn!(session = %s.id, wallet_id, "setup Checkout for no known wallet");
        return Ok(EventOutcome::UnknownCheckout);
    };
    let Some(payment_method) = intent.and_then(|i| i.payment_method.clone()) else {
        return Ok(EventOutcome::NoPaymentMethod);
    };
    let customer =
        intent.and_then(|i| i.customer.clone()).or_else(|| s.customer.as_ref().map(|c| c.id().to_string()));
    let Some(customer) = customer else { return Ok(EventOutcome::NoPaymentMethod) };
    diesel::update(accounts::table.find(wallet.id))
        .set((
            accounts::stripe_customer_id.eq(Some(customer)),
            accounts::stripe_payment_method_id.eq(Some(payment_method)),
            accounts::auto_top_up_failures.eq(0),
            accounts::auto_top_up_retry_after.eq(None::<chrono::NaiveDateTime>),
        ))
        .execute(tx.conn())?;
    tracing::info!(wallet_id, "payment method saved for auto top-up");
    Ok(EventOutcome::PaymentMethodSaved)
}

/// Takes the send lease of up to `limit` pending orders nobody holds; their
/// ids, oldest first.
pub fn claim_due(conn: &mut DbConn, limit: i64) -> ServiceResult<Vec<String>> {
    let now = db::now();
    let candidates: Vec<String> = auto_top_up_orders::table
        .filter(auto_top_up_orders::status.eq(AutoTopUpStatus::Pending))
        .filter(
            auto_top_up_orders::send_lease_until.is_null().or(auto_top_up_orders::send_lease_until.lt(now)),
        )
        .order(auto_top_up_orders::created_at.asc())
        .limit(limit)
        .select(auto_top_up_orders::id)
        .load(conn)?;
    let mut claimed = Vec::new();
    for id in candidates {
        let n = diesel::update(
            auto_top_up_orders::table
                .find(&id)
                .filter(auto_top_up_orders::status.eq(AutoTopUpStatus::Pending))
                .filter(
                    auto_top_up_orders::send_lease_until
                        .is_null()
                        .or(auto_top_up_orders::send_lease_until.lt(now)),
                ),
        )
        .set((
            auto_top_up_orders::send_lease_until.eq(now + chrono::Duration::seconds(SEND_LEASE_SECS)),
            auto_top_up_orders::send_attempts.eq(auto_top_up_orders::send_attempts + 1),
        ))
        .execute(conn)?;
        if n == 1 {
            claimed.push(id);
        }
    }
    Ok(claimed)
}

/// Prepares a claimed order for sending, in one transaction: the payment to
/// ask Stripe for (its top-up made or found again), or `None` when it is
/// not to be sent: auto top-up was turned off, the card or pack went away,
/// or the wallet is frozen (the order is then `canceled`, with why).
pub fn prepare_send(
    conn: &mut DbConn,
    ctx: &Ctx,
    order_id: &str,
) -> ServiceResult<Option<OffSessionPayment>> {
    db::write_tx(conn, |tx| {
        let Some(order) = rows::order(tx, order_id)? else { return Ok(None) };
        if order.status != AutoTopUpStatus::Pending {
            return Ok(None);
        }
        let wallet = rows::wallet_settings(tx, order.wallet_account_id)?;
        let pack = wallet.pack_id.as_deref().and_then(|id| super::topups::find_pack(ctx, id).ok());
        let why_not = match (&wallet.stripe_customer_id, &wallet.stripe_payment_method_id, pack) {
            _ if !wallet.enabled => Some("auto top-up was turned off"),
            _ if wallet.frozen => Some("the wallet is frozen"),
            (None, _, _) | (_, None, _) => Some("no payment method on file"),
            (_, _, None) => Some("the pack is no longer on sale"),
            _ => None,
        };
        if let Some(reason) = why_not {
            diesel::update(auto_top_up_orders::table.find(&order.id))
                .set((
                    auto_top_up_orders::status.eq(AutoTopUpStatus::Canceled),
                    auto_top_up_orders::failure_reason.eq(reason),
                    auto_top_up_orders::send_lease_until.eq(None::<chrono::NaiveDateTime>),
                    auto_top_up_orders::updated_at.eq(db::now()),
                ))
                .execute(tx.conn())?;
            tracing::info!(order_id, reason, "auto top-up order canceled");
            return Ok(None);
        }
        let (Some(customer), Some(payment_method), Some(pack)) =
            (wallet.stripe_customer_id.clone(), wallet.stripe_payment_method_id.clone(), pack)
        else {
            return Ok(None);
        };
        let validity = wallet.validity.unwrap_or_else(|| pack.default_validity());
        let top_up = super::topups::auto_top_up_order(tx, ctx, &wallet, pack, validity, &order.id)?;
        diesel::update(auto_top_up_orders::table.find(&order.id))
            .set(auto_top_up_orders::top_up_id.eq(&top_up.id))
            .execute(tx.conn())?;
        Ok(Some(OffSessionPayment {
            order_id: order.id.clone(),
            top_up_id: top_up.id.clone(),
            wallet_id: top_up.wallet_id.clone(),
            customer,
            payment_method,
            amount_cents: top_up.amount_cents,
            description: format!("Auto top-up: {} credit pack", pack.name),
        }))
    })
}

/// What became of asking Stripe for an order's payment.
#[derive(Debug, Clone)]
pub enum SendResult {
    /// Stripe made the PaymentIntent (its status says whether it went through).
    Created(PaymentIntentRef),
    /// Stripe refused it (a declined card, authentication required, ...).
    Refused(String),
    /// No answer: the order stays pending and is asked for again (the same
    /// idempotency key) once the lease runs out.
    Unknown(String),
}

/// Records the outcome of a send: `processing` while Stripe settles it (the
/// webhook credits the wallet), `failed` when refused or when the payment
/// needs the customer (`requires_action`, `requires_payment_method`).
pub fn record_send(conn: &mut DbConn, order_id: &str, result: &SendResult) -> ServiceResult<()> {
    db::write_tx(conn, |tx| {
        match result {
            SendResult::Created(pi) if matches!(pi.status.as_str(), "succeeded" | "processing") => {
                diesel::update(
                    auto_top_up_orders::table
                        .find(order_id)
                        .filter(auto_top_up_orders::status.eq(AutoTopUpStatus::Pending)),
                )
                .set((
                    auto_top_up_orders::status.eq(AutoTopUpStatus::Processing),
                    auto_top_up_orders::payment_intent_id.eq(&pi.id),
                    auto_top_up_orders::send_lease_until.eq(None::<chrono::NaiveDateTime>),
                    auto_top_up_orders::updated_at.eq(db::now()),
                ))
                .execute(tx.conn())?;
                keep_payment_intent(tx, order_id, &pi.id)?;
            }
            SendResult::Created(pi) => {
                let reason = pi.failure.clone().unwrap_or_else(|| pi.status.clone());
                fail(tx, order_id, &reason)?;
                keep_payment_intent(tx, order_id, &pi.id)?;
            }
            SendResult::Refused(message) => {
                fail(tx, order_id, message)?;
            }
            SendResult::Unknown(_) => {}
        }
        Ok(())
    })
}

fn keep_payment_intent(tx: &mut WriteTx<'_>, order_id: &str, payment_intent: &str) -> ServiceResult<()> {
    diesel::update(auto_top_up_orders::table.find(order_id))
        .set(auto_top_up_orders::payment_intent_id.eq(payment_intent))
        .execute(tx.conn())?;
    if let Some(top_up_id) = rows::order(tx, order_id)?.and_then(|o| o.top_up_id) {
        super::topups::set_payment_intent(tx, &top_up_id, payment_intent)?;
    }
    Ok(())
}

/// Takes the wallet's row lock (a no-op update).
fn lock_wallet(tx: &mut WriteTx<'_>, account_id: i64) -> ServiceResult<()> {
    diesel::update(accounts::table.find(account_id))
        .set(accounts::auto_top_up_failures.eq(accounts::auto_top_up_failures))
        .execute(tx.conn())?;
    Ok(())
}

/// Fails an open order once (a guarded status change, so the worker's
/// refusal and Stripe's `payment_intent.payment_failed` count one failure),
/// counts it on the wallet, and turns auto top-up off at the third failure
/// in a row. Returns the outcome, or `None` when the order was not open.
fn fail(tx: &mut WriteTx<'_>, order_id: &str, reason: &str) -> ServiceResult<Option<EventOutcome>> {
    let reason: String = reason.chars().take(500).collect();
    let Some(order) = rows::order(tx, order_id)? else { return Ok(None) };
    // The wallet's row first, as a charge takes it before it records an
    // order: a charge waiting on this order's index entry must not hold the
    // row this transaction then waits for (a deadlock on PostgreSQL).
    lock_wallet(tx, order.wallet_account_id)?;
    let open = [AutoTopUpStatus::Pending, AutoTopUpStatus::Processing];
    let n = diesel::update(
        auto_top_up_orders::table.find(order_id).filter(auto_top_up_orders::status.eq_any(open)),
    )
    .set((
        auto_top_up_orders::status.eq(AutoTopUpStatus::Failed),
        auto_top_up_orders::failure_reason.eq(&reason),
        auto_top_up_orders::send_lease_until.eq(None::<chrono::NaiveDateTime>),
        auto_top_up_orders::updated_at.eq(db::now()),
    ))
    .execute(tx.conn())?;
    if n == 0 {
        return Ok(None);
    }
    if let Some(top_up_id) = &order.top_up_id {
        super::topups::fail_pending(tx, top_up_id)?;
    }
    let failures: i32 = diesel::update(accounts::table.find(order.wallet_account_id))
        .set(accounts::auto_top_up_failures.eq(accounts::auto_top_up_failures + 1))
        .returning(accounts::auto_top_up_failures)
        .get_result(tx.conn())?;
    // A declined card is not asked again on the next charge: the wallet
    // orders again only after a pause that grows with the failures.
    let retry_after = db::now() + pause_after(failures);
    diesel::update(accounts::table.find(order.wallet_account_id))
        .set(accounts::auto_top_up_retry_after.eq(Some(retry_after)))
        .execute(tx.conn())?;
    tracing::warn!(order_id, reason, failures, %retry_after, "auto top-up payment failed");
    let view = order_view(tx, order_id)?;
    let wallet = rows::wallet_settings(tx, order.wallet_account_id)?;
    events::record(tx, EventType::AutoTopUpFailed, &subject(&wallet), &view)?;
    if failures >= MAX_CONSECUTIVE_FAILURES {
        let turned_off = diesel::update(
            accounts::table.find(order.wallet_account_id).filter(accounts::auto_top_up_enabled.eq(true)),
        )
        .set((
            accounts::auto_top_up_enabled.eq(false),
            accounts::auto_top_up_disabled_reason
                .eq(format!("{failures} auto top-up payments in a row failed (last: {reason})")),
        ))
        .execute(tx.conn())?;
        tracing::warn!(order_id, failures, "auto top-up turned off after consecutive failures");
        if turned_off == 1 {
            let wallet = rows::wallet_settings(tx, order.wallet_account_id)?;
            events::record(tx, EventType::AutoTopUpDisabled, &subject(&wallet), &self::view(&wallet))?;
        }
        return Ok(Some(EventOutcome::AutoTopUpDisabled));
    }
    Ok(Some(EventOutcome::AutoTopUpFailed))
}

/// The auto top-up order a PaymentIntent pays: by its metadata, else by the
/// PaymentIntent id kept on the order.
fn order_of_payment(tx: &mut WriteTx<'_>, pi: &PaymentIntent) -> ServiceResult<Option<AutoTopUpOrderRow>> {
    if let Some(id) = pi.metadata.as_ref().and_then(|m| m.get("auto_top_up_order_id")) {
        return Ok(rows::order(tx, id)?);
    }
    Ok(auto_top_up_orders::table
        .filter(auto_top_up_orders::payment_intent_id.eq(&pi.id))
        .select(AutoTopUpOrderRow::as_select())
        .first(tx.conn())
        .optional()?)
}

/// `payment_intent.succeeded`: credits the order's top-up through the
/// Checkout top-up's settlement (exactly once: a guarded status change), the
/// order becomes `paid`, the wallet's failure count goes back to zero.
pub fn payment_succeeded(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    pi: &PaymentIntent,
    event_id: &str,
) -> ServiceResult<EventOutcome> {
    let Some(order) = order_of_payment(tx, pi)? else { return Ok(EventOutcome::NotAnAutoTopUp) };
    let top_up_id =
        order.top_up_id.clone().or_else(|| pi.metadata.as_ref().and_then(|m| m.get("top_up_id").cloned()));
    let Some(top_up_id) = top_up_id else { return Ok(EventOutcome::UnknownTopUp) };
    // The wallet's row first, as `fail` and charges take it.
    lock_wallet(tx, order.wallet_account_id)?;
    let outcome = super::topups::payment_intent_paid(
        tx,
        ctx,
        &top_up_id,
        &pi.id,
        pi.amount_received,
        &pi.currency,
        event_id,
    )?;
    let (status, reason) = match outcome {
        EventOutcome::Credited | EventOutcome::AlreadyCredited => (AutoTopUpStatus::Paid, None),
        // Paid, but not what was ordered: closed (so the wallet may order
        // again), its top-up waits for an operator; not a card failure.
        EventOutcome::AmountMismatch => {
            (AutoTopUpStatus::Failed, Some("amount_mismatch: the payment waits for an operator"))
        }
        _ => return Ok(outcome),
    };
    diesel::update(auto_top_up_orders::table.find(&order.id))
        .set((
            auto_top_up_orders::status.eq(status),
            auto_top_up_orders::payment_intent_id.eq(&pi.id),
            auto_top_up_orders::failure_reason.eq(reason),
            auto_top_up_orders::send_lease_until.eq(None::<chrono::NaiveDateTime>),
            auto_top_up_orders::updated_at.eq(db::now()),
        ))
        .execute(tx.conn())?;
    if outcome == EventOutcome::Credited {
        diesel::update(accounts::table.find(order.wallet_account_id))
            .set((
                accounts::auto_top_up_failures.eq(0),
                accounts::auto_top_up_retry_after.eq(None::<chrono::NaiveDateTime>),
            ))
            .execute(tx.conn())?;
    }
    Ok(outcome)
}

/// Takes up to `limit` orders left `processing` (their PaymentIntent sent,
/// no webhook seen) for longer than `after`: moving their `updated_at` to
/// now in a guarded statement claims each for one instance, which asks
/// Stripe; the next look at it is `after` later. Their (order, PaymentIntent)
/// ids, oldest first.
pub fn claim_stuck(
    conn: &mut DbConn,
    after: chrono::Duration,
    limit: i64,
) -> ServiceResult<Vec<(String, String)>> {
    let now = db::now();
    let cutoff = now.checked_sub_signed(after).unwrap_or(now);
    let stuck = || {
        auto_top_up_orders::table
            .filter(auto_top_up_orders::status.eq(AutoTopUpStatus::Processing))
            .filter(auto_top_up_orders::updated_at.le(cutoff))
            .filter(auto_top_up_orders::payment_intent_id.is_not_null())
    };
    let candidates: Vec<(String, Option<String>)> = stuck()
        .order(auto_top_up_orders::updated_at.asc())
        .limit(limit)
        .select((auto_top_up_orders::id, auto_top_up_orders::payment_intent_id))
        .load(conn)?;
    let mut claimed = Vec::new();
    for (id, pi) in candidates {
        let Some(pi) = pi else { continue };
        let n = diesel::update(stuck().filter(auto_top_up_orders::id.eq(&id)))
            .set(auto_top_up_orders::updated_at.eq(now))
            .execute(conn)?;
        if n == 1 {
            claimed.push((id, pi));
        }
    }
    Ok(claimed)
}

/// Settles a stuck order from its PaymentIntent as Stripe shows it now,
/// exactly as its webhook would (the same code, so it is credited once
/// whichever comes first): `succeeded` credits it, a PaymentIntent that
/// needs a new card or the customer, or was canceled, fails it; one still
/// processing stays so.
pub fn reconcile(conn: &mut DbConn, ctx: &Ctx, pi: &PaymentIntent) -> ServiceResult<EventOutcome> {
    db::write_tx(conn, |tx| match pi.status.as_str() {
        "succeeded" => payment_succeeded(tx, ctx, pi, &format!("reconciled:{}", pi.id)),
        "requires_payment_method" | "requires_action" | "canceled" => payment_failed(tx, pi),
        _ => Ok(EventOutcome::Ignored),
    })
}

/// `payment_intent.payment_failed` and `payment_intent.requires_action`:
/// the order fails (once), and counts towards turning auto top-up off.
pub fn payment_failed(tx: &mut WriteTx<'_>, pi: &PaymentIntent) -> ServiceResult<EventOutcome> {
    let Some(order) = order_of_payment(tx, pi)? else { return Ok(EventOutcome::NotAnAutoTopUp) };
    let outcome = fail(tx, &order.id, &pi.failure_reason())?.unwrap_or(EventOutcome::NotPending);
    diesel::update(auto_top_up_orders::table.find(&order.id))
        .set(auto_top_up_orders::payment_intent_id.eq(&pi.id))
        .execute(tx.conn())?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_doubles_with_each_failure_up_to_a_day() {
        let hours: Vec<i64> = [0, 1, 2, 3, 4, 5, 6, 7, i32::MAX].map(|f| pause_after(f).num_hours()).to_vec();
        assert_eq!(hours, vec![1, 1, 2, 4, 8, 16, 24, 24, 24]);
    }
}
