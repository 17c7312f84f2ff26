//! Billing profiles: what a person or an organization wants on its
//! invoices. Optional; an invoice copies the profile as it is when issued.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Caller, ServiceError, ServiceResult};
use crate::db::schema::billing_profiles;
use crate::db::{self, DbConn};
use crate::domain::text::checked_text;
use crate::domain::OwnerType;

/// A postal address.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Address {
    /// Street and number (1 to 200 characters).
    #[schema(max_length = 200)]
    pub line1: String,
    /// More of the street address (at most 200 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 200)]
    pub line2: Option<String>,
    /// 1 to 100 characters.
    #[schema(max_length = 100)]
    pub city: String,
    /// At most 20 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 20)]
    pub postal_code: Option<String>,
    /// State, province or region (at most 100 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 100)]
    pub region: Option<String>,
    /// ISO 3166-1 alpha-2 country code, upper case (`DE`, `US`).
    #[schema(pattern = "^[A-Z]{2}$", example = "DE")]
    pub country: String,
}

/// A tax identification number.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TaxId {
    /// Its kind, as Stripe names it (`eu_vat`, `gb_vat`, `us_ein`, ...):
    /// 2 to 20 lower-case letters, digits or `_`.
    #[serde(rename = "type")]
    #[schema(pattern = "^[a-z0-9_]{2,20}$", example = "eu_vat")]
    pub kind: String,
    /// The number (1 to 50 characters).
    #[schema(max_length = 50, example = "DE123456789")]
    pub value: String,
}

/// What goes on invoices as the buyer.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BillingProfile {
    /// The buyer's legal name (1 to 200 characters).
    #[schema(max_length = 200, example = "Acme GmbH")]
    pub legal_name: String,
    /// Where invoices go (at most 254 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 254, example = "billing@acme.example")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax_id: Option<TaxId>,
}

/// A billing profile as stored. Its fields are spelt out rather than
/// flattened: the request type refuses unknown fields, so a flattened
/// schema would say `updated_at` is not allowed.
#[derive(Debug, Serialize, ToSchema)]
pub struct BillingProfileView {
    pub legal_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tax_id: Option<TaxId>,
    pub updated_at: DateTime<Utc>,
}

impl BillingProfileView {
    fn new(profile: BillingProfile, updated_at: DateTime<Utc>) -> Self {
        let BillingProfile { legal_name, email, address, tax_id } = profile;
        BillingProfileView { legal_name, email, address, tax_id, updated_at }
    }
}

/// Whose billing profile.
#[derive(Clone, Debug)]
pub enum ProfileOwner {
    Me,
    Org(String),
}

fn text(field: &str, value: &str, max: usize) -> ServiceResult<String> {
    checked_text(field, value, max, false).map(str::to_string).map_err(ServiceError::Validation)
}

fn optional(field: &str, value: &Option<String>, max: usize) -> ServiceResult<Option<String>> {
    value.as_deref().map(|v| text(field, v, max)).transpose()
}

/// Checks every field and returns the profile trimmed.
pub fn validate(p: &BillingProfile) -> ServiceResult<BillingProfile> {
    let email = optional("email", &p.email, 254)?;
    if let Some(e) = &email {
        let shaped = e.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
        });
        if !shaped || e.contains(char::is_whitespace) || e.matches('@').count() != 1 {
            return Err(ServiceError::Validation(format!("email '{e}' is not an email address")));
        }
    }
    let address = match &p.address {
        None => None,
        Some(a) => {
            let country = a.country.trim();
            let is_code = country.len() == 2 && country.chars().all(|c| c.is_ascii_uppercase());
            if !is_code || celes::Country::from_alpha2(country).is_err() {
                return Err(ServiceError::Validation(format!(
                    "address.country '{}' is not an ISO 3166-1 alpha-2 country code (upper case, e.g. DE)",
                    a.country
                )));
            }
            Some(Address {
                line1: text("address.line1", &a.line1, 200)?,
                line2: optional("address.line2", &a.line2, 200)?,
                city: text("address.city", &a.city, 100)?,
                postal_code: optional("address.postal_code", &a.postal_code, 20)?,
                region: optional("address.region", &a.region, 100)?,
                country: country.to_string(),
            })
        }
    };
    let tax_id = match &p.tax_id {
        None => None,
        Some(t) => {
            let kind = t.kind.trim();
            let kind_ok = (2..=20).contains(&kind.len())
                && kind.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !kind_ok {
                return Err(ServiceError::Validation(format!(
                    "tax_id.type '{}' is not 2 to 20 lower-case letters, digits or _",
                    t.kind
                )));
            }
            Some(TaxId { kind: kind.to_string(), value: text("tax_id.value", &t.value, 50)? })
        }
    };
    Ok(BillingProfile { legal_name: text("legal_name", &p.legal_name, 200)?, email, address, tax_id })
}

/// The owner a caller names, checked: oneself, or an organization the
/// caller is an owner or admin of.
fn resolve(conn: &mut DbConn, caller: &Caller, owner: &ProfileOwner) -> ServiceResult<(OwnerType, String)> {
    match owner {
        ProfileOwner::Me => Ok((OwnerType::Person, caller.id.clone())),
        ProfileOwner::Org(org_id) => {
            super::orgs::require_admin(conn, org_id, &caller.id)?;
            Ok((OwnerType::Org, org_id.clone()))
        }
    }
}

/// The stored profile of an owner, if any (for invoices).
pub fn profile_of(
    conn: &mut DbConn,
    owner_type: OwnerType,
    owner_id: &str,
) -> ServiceResult<Option<BillingProfile>> {
    let text: Option<String> = billing_profiles::table
        .find((owner_type.as_str(), owner_id))
        .select(billing_profiles::profile)
        .first(conn)
        .optional()?;
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| ServiceError::Internal(format!("billing profile: {e}")))
    })
    .transpose()
}

/// `GET /v1/me/billing-profile`, `GET /v1/orgs/{id}/billing-profile`.
pub fn get_profile(
    conn: &mut DbConn,
    caller: &Caller,
    owner: &ProfileOwner,
) -> ServiceResult<BillingProfileView> {
    let (owner_type, owner_id) = resolve(conn, caller, owner)?;
    let row: Option<(String, chrono::NaiveDateTime)> = billing_profiles::table
        .find((owner_type.as_str(), &owner_id))
        .select((billing_profiles::profile, billing_profiles::updated_at))
        .first(conn)
        .optional()?;
    let (text, at) = row.ok_or(ServiceError::NotFound("billing profile"))?;
    let profile =
        serde_json::from_str(&text).map_err(|e| ServiceError::Internal(format!("billing profile: {e}")))?;
    Ok(BillingProfileView::new(profile, at.and_utc()))
}

/// `PUT /v1/me/billing-profile`, `PUT /v1/orgs/{id}/billing-profile`:
/// replaces the whole profile. Invoices already issued keep their copy.
pub fn put_profile(
    conn: &mut DbConn,
    caller: &Caller,
    owner: &ProfileOwner,
    profile: &BillingProfile,
) -> ServiceResult<BillingProfileView> {
    let profile = validate(profile)?;
    let text = serde_json::to_string(&profile).map_err(|e| ServiceError::Internal(e.to_string()))?;
    db::write_tx(conn, |tx| {
        let (owner_type, owner_id) = resolve(tx, caller, owner)?;
        let now = db::now();
        crate::db::invoices::upsert_profile(tx.conn(), owner_type.as_str(), &owner_id, &text, now)?;
        Ok(BillingProfileView::new(profile, now.and_utc()))
    })
}
