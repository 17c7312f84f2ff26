//! Invoices and credit notes. Every paid top-up gets an invoice, issued in
//! the transaction that credits it; a refund of the payment issues a credit
//! note referencing it. Neither is ever changed afterwards: the seller is
//! copied from the configuration and the buyer from their billing profile
//! at issue time.

use chrono::{DateTime, Datelike, NaiveDateTime, Utc};
use diesel::prelude::*;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::str::FromStr;
use utoipa::ToSchema;

use super::billing_profiles::{profile_of, BillingProfile};
use super::wallets::{load_for, Access};
use super::{Caller, Ctx, ServiceError, ServiceResult};
use crate::db::billing::TopUpRow;
use crate::db::invoices::{CreditNoteRow, InvoiceRow};
use crate::db::schema::{accounts, credit_note_counter, credit_notes, invoices};
use crate::db::{DbConn, WriteTx};
use crate::domain::ids::new_id;
use crate::domain::tax::{split_total, tax_share};
use crate::domain::{Credits, OwnerType, TopUpMethod, UsdCents, Validity};

/// The seller, as configured when the invoice was issued.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct Seller {
    pub name: String,
    pub address: Option<String>,
    pub tax_id: Option<String>,
}

/// What was sold.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct InvoiceLine {
    /// E.g. `Standard credit pack (credits valid 30 days)`.
    pub description: String,
    pub pack_id: String,
    /// Credits bought (the bonus not included).
    #[schema(value_type = String, example = "150")]
    pub credits: Credits,
    /// Bonus credits given with them.
    #[schema(value_type = String, example = "15")]
    pub bonus_credits: Credits,
    pub validity: Validity,
}

/// How the tax was found.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct InvoiceTax {
    /// `stripe` (computed by Stripe Tax at Checkout), `rate_table`
    /// (`TALLY_TAX_RATES` by the buyer's country) or `none`.
    pub source: String,
    /// The rate from the table, e.g. `"0.19"`; null otherwise.
    pub rate: Option<String>,
    /// Whether the pack price included the tax.
    pub inclusive: bool,
}

/// A credit note: a refund of (part of) an invoice.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreditNote {
    /// `cn_` id.
    pub id: String,
    /// Gap-free in its own sequence, e.g. `TALLY-CN-2026-000003`.
    pub number: String,
    pub invoice_id: String,
    pub issued_at: DateTime<Utc>,
    #[schema(value_type = String, example = "4.20")]
    pub subtotal_usd: UsdCents,
    #[schema(value_type = String, example = "0.80")]
    pub tax_usd: UsdCents,
    /// USD refunded.
    #[schema(value_type = String, example = "5.00")]
    pub total_usd: UsdCents,
    pub reason: String,
}

/// An invoice of a paid top-up.
#[derive(Debug, Serialize, ToSchema)]
pub struct Invoice {
    /// `inv_` id.
    pub id: String,
    /// Gap-free: the top-up's receipt number, e.g. `TALLY-2026-000042`.
    pub number: String,
    pub top_up_id: String,
    pub wallet_id: String,
    pub issued_at: DateTime<Utc>,
    pub seller: Seller,
    /// The buyer's billing profile when the invoice was issued; null if
    /// they had none.
    pub buyer: Option<BillingProfile>,
    pub line: InvoiceLine,
    /// Always `usd`.
    pub currency: String,
    #[schema(value_type = String, example = "15.00")]
    pub subtotal_usd: UsdCents,
    #[schema(value_type = String, example = "2.85")]
    pub tax_usd: UsdCents,
    /// What was paid.
    #[schema(value_type = String, example = "17.85")]
    pub total_usd: UsdCents,
    pub tax: InvoiceTax,
    /// `stripe` (card or other method through Stripe Checkout) or `manual`
    /// (settled by an operator, e.g. a bank transfer).
    pub payment_method: String,
    /// Refunds of this invoice, oldest first.
    pub credit_notes: Vec<CreditNote>,
}

/// A page of invoices, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct InvoiceList {
    pub data: Vec<Invoice>,
    /// More follow: ask with `starting_after` = the last id.
    pub has_more: bool,
}

/// What Stripe says was paid for a Checkout with Stripe Tax.
#[derive(Clone, Copy, Debug)]
pub struct StripeTax {
    pub total_cents: i64,
    pub tax_cents: i64,
    /// The price included the tax (Stripe did not add it).
    pub inclusive: bool,
}

fn internal(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Internal(format!("invoice: {e}"))
}

fn number(prefix: &str, at: NaiveDateTime, sequence: i64) -> String {
    format!("{prefix}-{}-{sequence:06}", at.year())
}

/// Issues the invoice of a top-up being credited, numbered with its
/// receipt number. Runs in the crediting transaction.
pub fn issue_for_top_up(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    row: &TopUpRow,
    receipt: i64,
    pack_name: &str,
    stripe_tax: Option<StripeTax>,
    at: NaiveDateTime,
) -> ServiceResult<InvoiceRow> {
    let conf = &ctx.settings.invoicing;
    let (owner_type, owner_id): (OwnerType, String) = accounts::table
        .find(row.wallet_account_id)
        .select((accounts::owner_type, accounts::owner_id))
        .first(tx.conn())?;
    let buyer = profile_of(tx, owner_type, &owner_id)?;
    let seller = Seller {
        name: conf.seller_name.clone(),
        address: conf.seller_address.clone(),
        tax_id: conf.seller_tax_id.clone(),
    };
    let validity_text = match row.validity.duration() {
        Some(d) => format!("credits valid {} days", d.num_days()),
        None => "credits never expire".to_string(),
    };
    let line = InvoiceLine {
        description: format!("{pack_name} credit pack ({validity_text})"),
        pack_id: row.pack_id.clone(),
        credits: row.credits,
        bonus_credits: row.bonus_credits,
        validity: row.validity,
    };
    let (total, tax, source, rate, inclusive) = match (stripe_tax, row.tax_rate.as_deref()) {
        (Some(s), _) if s.tax_cents > 0 => (s.total_cents, s.tax_cents, "stripe", None, s.inclusive),
        (_, Some(rate)) => {
            let r = Decimal::from_str(rate).map_err(internal)?;
            let (_, tax) = split_total(row.amount_cents, r).ok_or_else(|| internal("tax out of range"))?;
            (row.amount_cents, tax, "rate_table", Some(rate.to_string()), conf.tax.inclusive)
        }
        _ => (row.amount_cents, 0, "none", None, true),
    };
    let invoice = InvoiceRow {
        id: new_id("inv"),
        number: number(&conf.prefix, at, receipt),
        sequence: receipt,
        top_up_id: row.id.clone(),
        wallet_account_id: row.wallet_account_id,
        wallet_id: row.wallet_id.clone(),
        issued_at: at,
        seller: serde_json::to_string(&seller).map_err(internal)?,
        buyer: buyer.map(|b| serde_json::to_string(&b)).transpose().map_err(internal)?,
        line: serde_json::to_string(&line).map_err(internal)?,
        currency: "usd".into(),
        subtotal_cents: total - tax,
        tax_cents: tax,
        total_cents: total,
        tax_source: source.into(),
        tax_rate: rate,
        tax_inclusive: inclusive,
        payment_method: match row.method {
            TopUpMethod::Stripe => "stripe".into(),
            TopUpMethod::Manual => "manual".into(),
        },
    };
    diesel::insert_into(invoices::table).values(&invoice).execute(tx.conn())?;
    Ok(invoice)
}

fn invoice_of(conn: &mut DbConn, top_up_id: &str) -> ServiceResult<Option<InvoiceRow>> {
    Ok(invoices::table
        .filter(invoices::top_up_id.eq(top_up_id))
        .select(InvoiceRow::as_select())
        .first(conn)
        .optional()?)
}

/// `part` of `whole`, scaled to `to` (rounded down; `whole` gives `to`).
fn scale(part: i64, whole: i64, to: i64) -> i64 {
    if whole <= 0 {
        return 0;
    }
    if part >= whole {
        return to;
    }
    ((part.max(0) as i128 * to as i128) / whole as i128) as i64
}

/// The cents of the order that `paid_refunded` cents of the payment stand
/// for: the same, unless Stripe Tax added tax to the price (the payment is
/// then more than the order, and a refund is shared between the two).
pub fn order_cents_of_payment(conn: &mut DbConn, row: &TopUpRow, paid_refunded: i64) -> ServiceResult<i64> {
    Ok(match invoice_of(conn, &row.id)? {
        Some(inv) if inv.total_cents > row.amount_cents => {
            scale(paid_refunded, inv.total_cents, row.amount_cents)
        }
        _ => paid_refunded.min(row.amount_cents),
    })
}

/// Issues a credit note for a refund that brings the top-up's order to
/// `refunded` cents refunded in all (the payment to `paid_refunded` cents,
/// when Stripe says so). The note is what the invoice's refunded total
/// grows by (the order's share of the invoice total, unless the payment's
/// refunded total is known), its tax that share of the invoice's tax,
/// both on running totals: the notes of a fully refunded invoice add up
/// exactly to its total and its tax. Nothing for a top-up without an
/// invoice (credited before invoices existed), or when nothing more is
/// refunded.
pub fn issue_credit_note(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    row: &TopUpRow,
    refunded: i64,
    paid_refunded: Option<i64>,
    reason: &str,
) -> ServiceResult<Option<CreditNoteRow>> {
    let Some(invoice) = invoice_of(tx, &row.id)? else { return Ok(None) };
    let noted: Vec<i64> = credit_notes::table
        .filter(credit_notes::invoice_id.eq(&invoice.id))
        .select(credit_notes::total_cents)
        .load(tx.conn())?;
    let before: i64 = noted.iter().sum();
    let after = match paid_refunded {
        Some(paid) => paid.min(invoice.total_cents),
        None => scale(refunded, row.amount_cents, invoice.total_cents),
    };
    if after <= before {
        return Ok(None);
    }
    let total = after - before;
    let tax = tax_share(invoice.tax_cents, after, invoice.total_cents)
        - tax_share(invoice.tax_cents, before, invoice.total_cents);
    let sequence: i64 = diesel::update(credit_note_counter::table.find(1))
        .set(credit_note_counter::last_number.eq(credit_note_counter::last_number + 1))
        .returning(credit_note_counter::last_number)
        .get_result(tx.conn())?;
    let at = crate::db::now();
    let note = CreditNoteRow {
        id: new_id("cn"),
        number: format!("{}-CN-{}-{sequence:06}", ctx.settings.invoicing.prefix, at.year()),
        sequence,
        invoice_id: invoice.id,
        issued_at: at,
        subtotal_cents: total - tax,
        tax_cents: tax,
        total_cents: total,
        reason: reason.chars().take(500).collect(),
    };
    diesel::insert_into(credit_notes::table).values(&note).execute(tx.conn())?;
    Ok(Some(note))
}

fn note_view(n: CreditNoteRow) -> CreditNote {
    CreditNote {
        id: n.id,
        number: n.number,
        invoice_id: n.invoice_id,
        issued_at: n.issued_at.and_utc(),
        subtotal_usd: UsdCents::new(n.subtotal_cents),
        tax_usd: UsdCents::new(n.tax_cents),
        total_usd: UsdCents::new(n.total_cents),
        reason: n.reason,
    }
}

fn view(conn: &mut DbConn, row: InvoiceRow) -> ServiceResult<Invoice> {
    let notes: Vec<CreditNoteRow> = credit_notes::table
        .filter(credit_notes::invoice_id.eq(&row.id))
        .select(CreditNoteRow::as_select())
        .order(credit_notes::sequence.asc())
        .load(conn)?;
    Ok(Invoice {
        seller: serde_json::from_str(&row.seller).map_err(internal)?,
        buyer: row.buyer.as_deref().map(serde_json::from_str).transpose().map_err(internal)?,
        line: serde_json::from_str(&row.line).map_err(internal)?,
        subtotal_usd: UsdCents::new(row.subtotal_cents),
        tax_usd: UsdCents::new(row.tax_cents),
        total_usd: UsdCents::new(row.total_cents),
        tax: InvoiceTax { source: row.tax_source, rate: row.tax_rate, inclusive: row.tax_inclusive },
        credit_notes: notes.into_iter().map(note_view).collect(),
        id: row.id,
        number: row.number,
        top_up_id: row.top_up_id,
        wallet_id: row.wallet_id,
        issued_at: row.issued_at.and_utc(),
        currency: row.currency,
        payment_method: row.payment_method,
    })
}

/// `GET /v1/invoices/{id}`: whoever may read its wallet.
pub fn get_invoice(conn: &mut DbConn, caller: &Caller, id: &str) -> ServiceResult<Invoice> {
    let row: InvoiceRow = invoices::table
        .find(id)
        .select(InvoiceRow::as_select())
        .first(conn)
        .optional()?
        .ok_or(ServiceError::NotFound("invoice"))?;
    load_for(conn, caller, &row.wallet_id, Access::Read).map_err(|_| ServiceError::NotFound("invoice"))?;
    view(conn, row)
}

/// `GET /v1/invoices/{id}/pdf`: the invoice as a PDF document.
pub fn get_invoice_pdf(conn: &mut DbConn, caller: &Caller, id: &str) -> ServiceResult<(String, Vec<u8>)> {
    let invoice = get_invoice(conn, caller, id)?;
    let pdf = super::invoice_pdf::render(&invoice);
    Ok((invoice.number, pdf))
}

/// `GET /v1/wallets/{id}/invoices`: newest first, keyset-paginated.
pub fn list_invoices(
    conn: &mut DbConn,
    caller: &Caller,
    wallet_id: &str,
    limit: i64,
    starting_after: Option<&str>,
) -> ServiceResult<InvoiceList> {
    if !(1..=100).contains(&limit) {
        return Err(ServiceError::Validation("limit must be 1 to 100".into()));
    }
    let wallet = load_for(conn, caller, wallet_id, Access::Read)?;
    let mut query = invoices::table
        .filter(invoices::wallet_account_id.eq(wallet.id))
        .select(InvoiceRow::as_select())
        .into_boxed();
    if let Some(cursor) = starting_after {
        let seq: Option<i64> = invoices::table
            .find(cursor)
            .filter(invoices::wallet_account_id.eq(wallet.id))
            .select(invoices::sequence)
            .first(conn)
            .optional()?;
        let seq = seq.ok_or(ServiceError::NotFound("invoice (starting_after)"))?;
        query = query.filter(invoices::sequence.lt(seq));
    }
    let mut rows: Vec<InvoiceRow> = query.order(invoices::sequence.desc()).limit(limit + 1).load(conn)?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let data = rows.into_iter().map(|r| view(conn, r)).collect::<ServiceResult<Vec<_>>>()?;
    Ok(InvoiceList { data, has_more })
}
