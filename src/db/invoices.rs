//! Row structs of billing profiles, invoices and credit notes, and the
//! upsert of a billing profile.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{Text, Timestamp};

use super::schema::{credit_notes, invoices};
use super::DbConn;

/// An issued invoice. `seller`, `buyer` and `line` are JSON documents
/// copied at issue time; nothing here changes afterwards.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = invoices)]
pub struct InvoiceRow {
    pub id: String,
    pub number: String,
    pub sequence: i64,
    pub top_up_id: String,
    pub wallet_account_id: i64,
    pub wallet_id: String,
    pub issued_at: NaiveDateTime,
    pub seller: String,
    pub buyer: Option<String>,
    pub line: String,
    pub currency: String,
    pub subtotal_cents: i64,
    pub tax_cents: i64,
    pub total_cents: i64,
    pub tax_source: String,
    pub tax_rate: Option<String>,
    pub tax_inclusive: bool,
    pub payment_method: String,
}

/// An issued credit note: a refund of part or all of an invoice.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = credit_notes)]
pub struct CreditNoteRow {
    pub id: String,
    pub number: String,
    pub sequence: i64,
    pub invoice_id: String,
    pub issued_at: NaiveDateTime,
    pub subtotal_cents: i64,
    pub tax_cents: i64,
    pub total_cents: i64,
    pub reason: String,
}

/// Sets the billing profile of an owner (one statement, so two concurrent
/// first writes cannot both insert).
pub fn upsert_profile(
    conn: &mut DbConn,
    owner_type: &str,
    owner_id: &str,
    profile: &str,
    at: NaiveDateTime,
) -> QueryResult<usize> {
    diesel::sql_query(
        "INSERT INTO billing_profiles (owner_type, owner_id, profile, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (owner_type, owner_id) DO UPDATE SET profile = excluded.profile, \
         updated_at = excluded.updated_at",
    )
    .bind::<Text, _>(owner_type)
    .bind::<Text, _>(owner_id)
    .bind::<Text, _>(profile)
    .bind::<Timestamp, _>(at)
    .execute(conn)
}
