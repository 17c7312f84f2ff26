//! The price book: per model, the runtime infra price in credits per message,
//! the optional metered rates (credits per million input and output tokens,
//! per generated asset) and, for margin reports, the provider's cost in USD
//! per message. A change applies to new charges only: each charge copies the
//! prices it used.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use rust_decimal::Decimal;
use serde::Serialize;
use utoipa::ToSchema;

use super::{ServiceError, ServiceResult};
use crate::db::catalog::ModelPriceRow;
pub use crate::db::catalog::ModelRow;
use crate::db::schema::models;
use crate::db::{self, DbConn};
use crate::domain::money::CREDIT_SCALE;
use crate::domain::pricing::ModelRates;
use crate::domain::Credits;

/// A model in the price book.
#[derive(Debug, Serialize, ToSchema)]
pub struct Model {
    /// The model's id, e.g. `gpt-4o-mini`.
    pub id: String,
    /// Credits charged per message for running it.
    #[schema(value_type = String, example = "0.3")]
    pub runtime_infra: Credits,
    /// What the platform pays the provider per message, in USD.
    #[schema(example = "0.0021")]
    pub provider_cost: String,
    /// Credits per million input tokens; null: input tokens are not metered
    /// (a usage with input tokens is a 422 `model_not_metered`).
    #[schema(value_type = Option<String>, example = "0.15")]
    pub input_per_mtok: Option<Credits>,
    /// Credits per million output tokens; null: not metered.
    #[schema(value_type = Option<String>, example = "0.6")]
    pub output_per_mtok: Option<Credits>,
    /// Credits per generated asset (image, video); null: not metered.
    #[schema(value_type = Option<String>, example = "0.04")]
    pub per_generation: Option<Credits>,
    pub updated_at: DateTime<Utc>,
}

/// A model's prices as set by an operator.
#[derive(Debug, Clone, Copy, Default)]
pub struct ModelPrices {
    pub runtime_infra: Credits,
    pub input_per_mtok: Option<Credits>,
    pub output_per_mtok: Option<Credits>,
    pub per_generation: Option<Credits>,
}

/// The whole price book.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    pub data: Vec<Model>,
    pub has_more: bool,
}

impl ModelRow {
    /// The prices a charge on this model uses.
    pub fn rates(&self) -> ModelRates {
        ModelRates {
            runtime_infra: self.runtime_infra,
            input_per_mtok: self.input_per_mtok,
            output_per_mtok: self.output_per_mtok,
            per_generation: self.per_generation,
        }
    }
}

/// Micro-USD, printed as credits are: up to 6 decimal places, no trailing
/// zeros.
pub fn usd_micros_to_string(micros: i64) -> String {
    Decimal::new(micros, CREDIT_SCALE).normalize().to_string()
}

fn view(row: ModelRow) -> Model {
    Model {
        id: row.id,
        runtime_infra: row.runtime_infra,
        provider_cost: usd_micros_to_string(row.provider_cost_micro_usd),
        input_per_mtok: row.input_per_mtok,
        output_per_mtok: row.output_per_mtok,
        per_generation: row.per_generation,
        updated_at: row.updated_at.and_utc(),
    }
}

pub fn check_model_id(id: &str) -> ServiceResult<()> {
    let ok = !id.is_empty()
        && id.len() <= 100
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if !ok {
        return Err(ServiceError::Validation(
            "model id must be 1 to 100 characters of letters, digits, '-', '_', '.', ':'".into(),
        ));
    }
    Ok(())
}

/// `GET /v1/models`.
pub fn list_models(conn: &mut DbConn) -> ServiceResult<ModelList> {
    let rows = models::table.order(models::id.asc()).select(ModelRow::as_select()).load(conn)?;
    Ok(ModelList { data: rows.into_iter().map(view).collect(), has_more: false })
}

pub fn find(conn: &mut DbConn, id: &str) -> ServiceResult<Option<ModelRow>> {
    Ok(models::table.find(id).select(ModelRow::as_select()).first(conn).optional()?)
}

/// `PUT /v1/admin/models/{id}`: creates or reprices a model. Every price is
/// replaced: a metered rate left out is cleared (not metered).
pub fn put_model(
    conn: &mut DbConn,
    id: &str,
    prices: ModelPrices,
    provider_cost: &str,
) -> ServiceResult<Model> {
    check_model_id(id)?;
    let ModelPrices { runtime_infra, input_per_mtok, output_per_mtok, per_generation } = prices;
    let named = [
        ("runtime_infra", Some(runtime_infra)),
        ("input_per_mtok", input_per_mtok),
        ("output_per_mtok", output_per_mtok),
        ("per_generation", per_generation),
    ];
    if let Some((name, _)) = named.iter().find(|(_, p)| p.is_some_and(Credits::is_negative)) {
        return Err(ServiceError::Validation(format!("{name} must not be negative")));
    }
    let cost =
        Credits::parse(provider_cost).map_err(|e| ServiceError::Validation(format!("provider_cost: {e}")))?;
    if cost.is_negative() {
        return Err(ServiceError::Validation("provider_cost must not be negative".into()));
    }
    db::write_tx(conn, |tx| {
        let now = db::now();
        let row = ModelPriceRow {
            id,
            runtime_infra,
            // Micro-USD: parsed with the credits' 6 decimal places.
            provider_cost_micro_usd: cost.micros(),
            input_per_mtok,
            output_per_mtok,
            per_generation,
            created_at: now,
            updated_at: now,
        };
        let updated = diesel::update(models::table.find(id)).set(&row).execute(tx.conn())?;
        if updated == 0 {
            diesel::insert_into(models::table).values(&row).execute(tx.conn())?;
        }
        tracing::info!(model = id, %runtime_infra, provider_cost = %cost, "price book updated");
        Ok(view(models::table.find(id).select(ModelRow::as_select()).first(tx.conn())?))
    })
}
