//! Self-service for payers and creators: who may open the Billing Portal
//! (and for which Stripe customer), who may cancel a subscription and what
//! Stripe's answer changes, and whose Express dashboard a creator may open.
//! The Stripe calls themselves are in `crate::flows::self_service`.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use utoipa::ToSchema;

use super::orgs::{require_admin, role_in};
use super::plans::Subject;
use super::{Caller, ErrorCode, ServiceError, ServiceResult};
use crate::db::plans::SubscriptionRow;
use crate::db::schema::subscriptions;
use crate::db::{self, DbConn};
use crate::domain::SubscriptionStatus;
use crate::stripe::self_service::SubscriptionRef;

/// Longest `return_url` accepted (Stripe takes up to 5,000 characters;
/// browsers and logs handle 2,048 well).
pub const MAX_RETURN_URL: usize = 2048;

/// A Billing Portal session to go to.
#[derive(Debug, Serialize, ToSchema)]
pub struct BillingPortalSession {
    /// `person` or `org`: whose customer the portal manages.
    #[schema(example = "person")]
    pub subject_type: String,
    #[schema(example = "alice")]
    pub subject_id: String,
    /// Stripe's portal page (single use, valid for a short while).
    #[schema(example = "https://billing.stripe.com/p/session/test_YWNjdF8x")]
    pub url: String,
}

/// A subscription after a change.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionView {
    /// Stripe's `sub_` id.
    #[schema(example = "sub_1PgafTB7WZ01zgkW")]
    pub id: String,
    /// `person` or `org`.
    pub subject_type: String,
    pub subject_id: String,
    #[schema(example = "pro")]
    pub plan: String,
    /// Stripe's status as tally last learned it (`active`, `canceled`, ...).
    #[schema(example = "active")]
    pub status: String,
    /// True when it ends at the close of its current period (the plan stays
    /// in force until then; `customer.subscription.deleted` ends it).
    pub cancel_at_period_end: bool,
    pub updated_at: DateTime<Utc>,
}

/// An Express dashboard link.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoginLink {
    #[schema(example = "org_01J9Z")]
    pub org_id: String,
    /// Stripe's single-use link to the connected account's dashboard.
    #[schema(example = "https://connect.stripe.com/express/acct_1PgafTB7WZ01zgkW/ehJImT2clfHr")]
    pub url: String,
}

fn view(row: SubscriptionRow) -> SubscriptionView {
    SubscriptionView {
        id: row.id,
        subject_type: row.subject_type,
        subject_id: row.subject_id,
        plan: row.plan,
        status: row.status.as_str().to_string(),
        cancel_at_period_end: row.cancel_at_period_end,
        updated_at: row.updated_at.and_utc(),
    }
}

/// Checks a `return_url`: an absolute `https` URL with a host, or an `http`
/// one whose origin is one of the allowed browser origins
/// (`TALLY_CORS_ORIGINS`, e.g. `http://localhost:3000` in development); at
/// most [`MAX_RETURN_URL`] characters, no credentials in it.
pub fn validate_return_url(text: &str, allowed_origins: &[String]) -> ServiceResult<()> {
    let bad = |why: &str| ServiceError::Validation(format!("return_url {why}"));
    if text.len() > MAX_RETURN_URL {
        return Err(bad(&format!("must be at most {MAX_RETURN_URL} characters")));
    }
    let url = url::Url::parse(text).map_err(|e| bad(&format!("is not an absolute URL ({e})")))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("must name a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not carry credentials"));
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" => {
            let origin = url.origin().ascii_serialization();
            if allowed_origins.iter().any(|o| o == &origin) {
                Ok(())
            } else {
                Err(bad("must be https (http only for an origin in TALLY_CORS_ORIGINS)"))
            }
        }
        other => Err(bad(&format!("must be https, not {other}"))),
    }
}

/// `POST /v1/billing-portal`: the subject (the caller, or an organization
/// the caller owns or administers) and its Stripe customer: the one paying
/// its most recent subscription. None yet is a 409 `no_stripe_customer`.
pub fn portal_customer(
    conn: &mut DbConn,
    caller: &Caller,
    org_id: Option<&str>,
) -> ServiceResult<(Subject, String)> {
    let subject = match org_id {
        Some(org) => {
            require_admin(conn, org, &caller.id)?;
            Subject::Org(org.to_string())
        }
        None => Subject::Person(caller.id.clone()),
    };
    let customer: Option<Option<String>> = subscriptions::table
        .filter(subscriptions::subject_type.eq(subject.kind()))
        .filter(subscriptions::subject_id.eq(subject.id()))
        .filter(subscriptions::customer.is_not_null())
        .order((subscriptions::created_at.desc(), subscriptions::id.desc()))
        .select(subscriptions::customer)
        .first(conn)
        .optional()?;
    match customer.flatten() {
        Some(c) => Ok((subject, c)),
        None => Err(ServiceError::Conflict {
            kind: ErrorCode::NoStripeCustomer,
            message: format!(
                "no Stripe customer pays for this {} yet: the Billing Portal opens once a \
                 subscription has been bought (POST /v1/subscriptions)",
                if org_id.is_some() { "organization" } else { "person" }
            ),
        }),
    }
}

/// `POST /v1/subscriptions/{id}/cancel`: the subscription, if the caller
/// pays it (the person, or an owner/admin of the organization); anyone else
/// does not learn it exists, except a plain member of the organization (403).
pub fn cancel_target(conn: &mut DbConn, caller: &Caller, id: &str) -> ServiceResult<SubscriptionRow> {
    let row: SubscriptionRow = subscriptions::table
        .find(id)
        .select(SubscriptionRow::as_select())
        .first(conn)
        .optional()?
        .ok_or(ServiceError::NotFound("subscription"))?;
    match row.subject_type.as_str() {
        "person" if row.subject_id == caller.id => Ok(row),
        "org" => {
            let role = role_in(conn, &row.subject_id, &caller.id)
                .map_err(|_| ServiceError::NotFound("subscription"))?;
            if !role.can_manage() {
                return Err(ServiceError::Forbidden(
                    "only an owner or admin of the organization may cancel its subscription".into(),
                ));
            }
            Ok(row)
        }
        _ => Err(ServiceError::NotFound("subscription")),
    }
}

/// The subscription as it stands, when nothing is left to cancel.
pub fn ended_view(row: SubscriptionRow) -> Option<SubscriptionView> {
    row.status.has_ended().then(|| view(row))
}

/// Keeps what Stripe answered to a cancellation: the end at the close of
/// the period, or the end now (an ended subscription never comes back, so
/// a later event cannot undo it; the `customer.subscription.deleted` that
/// follows changes nothing more). The order of events (`last_event_at`) is
/// left to the webhooks.
pub fn record_cancel(conn: &mut DbConn, answer: &SubscriptionRef) -> ServiceResult<SubscriptionView> {
    db::write_tx(conn, |tx| {
        let now = db::now();
        let ended = answer.status.parse::<SubscriptionStatus>().is_ok_and(SubscriptionStatus::has_ended);
        let open = subscriptions::table
            .find(&answer.id)
            .filter(subscriptions::status.ne_all(SubscriptionStatus::ENDED));
        if ended {
            diesel::update(open)
                .set((
                    subscriptions::status.eq(SubscriptionStatus::Canceled),
                    subscriptions::past_due_since.eq(None::<chrono::NaiveDateTime>),
                    subscriptions::cancel_at_period_end.eq(answer.cancel_at_period_end),
                    subscriptions::updated_at.eq(now),
                ))
                .execute(tx.conn())?;
        } else {
            diesel::update(open)
                .set((
                    subscriptions::cancel_at_period_end.eq(answer.cancel_at_period_end),
                    subscriptions::updated_at.eq(now),
                ))
                .execute(tx.conn())?;
        }
        let row: SubscriptionRow = subscriptions::table
            .find(&answer.id)
            .select(SubscriptionRow::as_select())
            .first(tx.conn())
            .optional()?
            .ok_or(ServiceError::NotFound("subscription"))?;
        Ok(view(row))
    })
}

/// `POST /v1/orgs/{id}/payout-account/login-link`: the connected account
/// of an organization the caller owns, once its onboarding is done (Stripe
/// makes login links only for accounts whose details are submitted).
pub fn login_link_account(conn: &mut DbConn, caller: &Caller, org_id: &str) -> ServiceResult<String> {
    super::payouts::require_owner(conn, org_id, &caller.id)?;
    match super::payouts::find_account(conn, org_id)? {
        Some(row) if row.details_submitted => Ok(row.stripe_account_id),
        Some(_) => Err(ServiceError::Conflict {
            kind: ErrorCode::OnboardingIncomplete,
            message: "the payout account's onboarding is unfinished: finish it at the link \
                      PUT /v1/orgs/{org_id}/payout-account returns"
                .into(),
        }),
        None => Err(ServiceError::Conflict {
            kind: ErrorCode::OnboardingIncomplete,
            message: "the organization has no payout account: connect one with \
                      PUT /v1/orgs/{org_id}/payout-account"
                .into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_urls_are_https_or_an_allowed_http_origin() {
        let allowed = vec!["http://localhost:3000".to_string()];
        assert!(validate_return_url("https://app.example.com/billing?x=1", &allowed).is_ok());
        assert!(validate_return_url("http://localhost:3000/account", &allowed).is_ok());
        for bad in [
            "http://localhost:3001/account",
            "http://app.example.com/",
            "javascript:alert(1)",
            "/relative/path",
            "ftp://example.com/",
            "https://user:pw@example.com/",
            "https://",
            "https://exa mple.com/",
            "",
        ] {
            assert!(validate_return_url(bad, &allowed).is_err(), "{bad} accepted");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_RETURN_URL));
        assert!(validate_return_url(&long, &allowed).is_err());
    }
}
