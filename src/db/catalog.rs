//! Row structs of the price book: models and tools, with their prices in
//! credits.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::{models, tools};
use crate::domain::Credits;

/// A model and its prices; the provider's cost is micro-USD per message.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = models)]
pub struct ModelRow {
    pub id: String,
    pub runtime_infra: Credits,
    pub provider_cost_micro_usd: i64,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    pub input_per_mtok: Option<Credits>,
    pub output_per_mtok: Option<Credits>,
    pub per_generation: Option<Credits>,
}

/// A model's prices as an operator sets them: the insert of a new model,
/// and (without `id` and `created_at`) the update of every price of an
/// existing one. `None` rates are written as NULL (not metered).
#[derive(Debug, Insertable, AsChangeset)]
#[diesel(table_name = models, treat_none_as_default_value = false, treat_none_as_null = true)]
pub struct ModelPriceRow<'a> {
    #[diesel(skip_update)]
    pub id: &'a str,
    pub runtime_infra: Credits,
    pub provider_cost_micro_usd: i64,
    pub input_per_mtok: Option<Credits>,
    pub output_per_mtok: Option<Credits>,
    pub per_generation: Option<Credits>,
    #[diesel(skip_update)]
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// A tool and its price per call.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = tools)]
pub struct ToolRow {
    pub id: String,
    pub price: Credits,
    pub updated_at: NaiveDateTime,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = tools)]
pub struct NewTool<'a> {
    pub id: &'a str,
    pub price: Credits,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}
