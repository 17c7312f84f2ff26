//! Reading charges: one charge as it was stored, and a wallet's charges
//! (by metadata, too).

use actix_web::{get, web, HttpRequest, HttpResponse};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_actix_web::service_config::ServiceConfig;

use super::{run, run_replica, AppState};
use crate::auth::KeyAllowed;
use crate::domain::metadata::{self, Metadata};
use crate::error::{ApiError, ErrorResponse};
use crate::services::charge_views::{self, ChargeList};
use crate::services::charges::Charge;
use crate::services::ServiceError;

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(get_charge).service(list_wallet_charges);
}

/// Get a charge
///
/// The charge as it was made: the agent, model, person, paying wallet and
/// organization, the prices it used (runtime infra, add-on, the model's
/// token and generation rates and the tool prices as they were), its usage
/// (null without one), its parts and total, and for a charge captured from
/// a hold `hold_id`, `held` and `uncollected`. `balance_after` and
/// `transaction_id` are the paying wallet's; `free_messages_left` is the
/// person's count on the agent now. Visible to the person charged, an owner
/// or admin of the paying organization, a service token or an operator.
#[utoipa::path(
    tag = "charges",
    params(("charge_id" = String, Path, description = "The charge's `chg_` id")),
    responses(
        (status = 200, description = "The charge", body = Charge),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 404, description = "No such charge, or not visible to the caller", body = ErrorResponse),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[get("/v1/charges/{charge_id}")]
pub async fn get_charge(
    state: web::Data<AppState>,
    KeyAllowed(user): KeyAllowed,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let id = path.into_inner();
    let charge = run(&state, move |conn, ctx| charge_views::get_charge(conn, ctx, &caller, &id)).await?;
    // With an API key, only the charges its wallet paid.
    if user.api_key.as_ref().is_some_and(|k| k.wallet_id != charge.wallet_id) {
        return Err(ApiError::not_found("charge not found"));
    }
    Ok(HttpResponse::Ok().json(charge))
}

/// Which of a wallet's charges to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WalletChargeQuery {
    /// Page size, 1 to 100 (default 25).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// The last charge id of the previous page (404 if not one of this wallet's).
    #[param(pattern = r"^chg_[A-Za-z0-9]{1,64}$")]
    pub starting_after: Option<String>,
}

/// The `metadata[key]=value` pairs of a query string (each key once).
fn metadata_filter(query: &str) -> Result<Metadata, ApiError> {
    let pairs = web::Query::<Vec<(String, String)>>::from_query(query)
        .map_err(|e| ServiceError::Validation(format!("query string: {e}")))?
        .into_inner();
    let mut filter = Metadata::default();
    for (name, value) in pairs {
        let Some(key) = name.strip_prefix("metadata[").and_then(|k| k.strip_suffix(']')) else {
            if name.starts_with("metadata") {
                return Err(ServiceError::Validation(format!(
                    "query parameter '{name}': filter by metadata as metadata[key]=value"
                ))
                .into());
            }
            continue;
        };
        metadata::check_key(key).map_err(ServiceError::Validation)?;
        metadata::check_value(key, &value).map_err(ServiceError::Validation)?;
        if filter.0.insert(key.to_string(), value).is_some() {
            return Err(ServiceError::Validation(format!("metadata[{key}] given twice")).into());
        }
    }
    Ok(filter)
}

/// List a wallet's charges
///
/// The charges the wallet paid, newest first, keyset-paginated, each as
/// `GET /v1/charges/{id}` shows it. `metadata[key]=value` (repeatable
/// with other keys) keeps only the charges carrying every such pair, e.g.
/// `?metadata[conversation_id]=conv_8f2a` for one conversation's charges.
/// The wallet's owner, or an owner or admin of the owning organization; a
/// plain member sees only their own charges; an API key only its wallet's.
#[utoipa::path(
    tag = "charges",
    params(
        ("wallet_id" = String, Path, description = "The wallet's `wal_` id"),
        WalletChargeQuery,
        ("metadata" = Option<Metadata>, Query, style = DeepObject, explode,
            description = "Only charges carrying these pairs: `metadata[key]=value`"),
    ),
    responses(
        (status = 200, description = "A page of charges", body = ChargeList),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 404, description = "No such wallet, not the caller's, or `starting_after` unknown", body = ErrorResponse),
        (status = 422, description = "Invalid limit or metadata filter", body = ErrorResponse),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[get("/v1/wallets/{wallet_id}/charges")]
pub async fn list_wallet_charges(
    state: web::Data<AppState>,
    req: HttpRequest,
    KeyAllowed(user): KeyAllowed,
    path: web::Path<String>,
    query: web::Query<WalletChargeQuery>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let wallet_id = path.into_inner();
    if user.api_key.as_ref().is_some_and(|k| k.wallet_id != wallet_id) {
        return Err(ApiError::not_found("wallet not found"));
    }
    let filter = metadata_filter(req.query_string())?;
    let q = query.into_inner();
    let list = run_replica(&state, move |conn, ctx| {
        charge_views::list_wallet_charges(
            conn,
            ctx,
            &caller,
            &wallet_id,
            &filter,
            q.limit.unwrap_or(25),
            q.starting_after.as_deref(),
        )
    })
    .await?;
    Ok(HttpResponse::Ok().json(list))
}
