//! Operator reports: revenue by model over a time range, from the charges
//! (each of which recorded the prices it used).

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Text, Timestamp};
use rust_decimal::Decimal;
use serde::Serialize;
use utoipa::ToSchema;

use super::{Ctx, ServiceError, ServiceResult};
use crate::db::DbConn;
use crate::domain::Credits;

/// Revenue over `[from, to)`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevenueReport {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// The USD value of one credit used for the USD columns.
    pub credit_usd: String,
    pub totals: RevenueLine,
    pub by_model: Vec<RevenueLine>,
}

/// Revenue of one model (or of all, in `totals`). Credits are decimal
/// strings; USD columns are exact decimal strings.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct RevenueLine {
    /// The model; null in `totals`.
    pub model: Option<String>,
    pub messages: i64,
    pub paid_messages: i64,
    pub free_messages: i64,
    /// Runtime infra charged to payers, in credits.
    #[schema(value_type = String)]
    pub infra_revenue: Credits,
    /// The platform's share of add-ons, in credits.
    #[schema(value_type = String)]
    pub marketplace_share: Credits,
    /// Runtime infra of free messages, borne by the platform, in credits.
    #[schema(value_type = String)]
    pub subsidies: Credits,
    /// Add-ons creators forwent on free messages, in credits.
    #[schema(value_type = String)]
    pub addon_forgone: Credits,
    /// Creators' part of add-ons, in credits.
    #[schema(value_type = String)]
    pub creator_earnings: Credits,
    /// (infra revenue + marketplace share) in USD.
    pub revenue_usd: String,
    /// What the providers cost for every message, free ones included, in USD.
    pub provider_cost_usd: String,
    /// revenue_usd − provider_cost_usd.
    pub margin_usd: String,
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    model_id: String,
    #[diesel(sql_type = Bool)]
    free: bool,
    #[diesel(sql_type = BigInt)]
    n: i64,
    #[diesel(sql_type = BigInt)]
    infra: i64,
    #[diesel(sql_type = BigInt)]
    share: i64,
    #[diesel(sql_type = BigInt)]
    forgone: i64,
    #[diesel(sql_type = BigInt)]
    creator: i64,
    #[diesel(sql_type = BigInt)]
    cost: i64,
}

fn micros(m: i64) -> Decimal {
    Decimal::new(m, 6)
}

impl RevenueLine {
    fn add(&mut self, r: &Row) -> Option<()> {
        self.messages += r.n;
        let add = |a: &mut Credits, m: i64| -> Option<()> {
            *a = a.checked_add(Credits::from_micros(m))?;
            Some(())
        };
        if r.free {
            self.free_messages += r.n;
            add(&mut self.subsidies, r.infra)?;
        } else {
            self.paid_messages += r.n;
            add(&mut self.infra_revenue, r.infra)?;
        }
        add(&mut self.marketplace_share, r.share)?;
        add(&mut self.addon_forgone, r.forgone)?;
        add(&mut self.creator_earnings, r.creator)?;
        let cost: Decimal = self.provider_cost_usd.parse().unwrap_or_default();
        self.provider_cost_usd = (cost + micros(r.cost)).normalize().to_string();
        Some(())
    }

    fn finish(&mut self, rate: Decimal) {
        let revenue = (self.infra_revenue.to_decimal() + self.marketplace_share.to_decimal()) * rate;
        let cost: Decimal = self.provider_cost_usd.parse().unwrap_or_default();
        self.revenue_usd = revenue.normalize().to_string();
        self.provider_cost_usd = cost.normalize().to_string();
        self.margin_usd = (revenue - cost).normalize().to_string();
    }
}

/// `GET /v1/admin/reports/revenue?from&to`.
pub fn revenue(
    conn: &mut DbConn,
    ctx: &Ctx,
    from: NaiveDateTime,
    to: NaiveDateTime,
) -> ServiceResult<RevenueReport> {
    if from >= to {
        return Err(ServiceError::Validation("from must be before to".into()));
    }
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT model_id, free, COUNT(*) AS n, \
                CAST(SUM(runtime_infra) AS BIGINT) AS infra, CAST(SUM(platform_share) AS BIGINT) AS share, \
                CAST(SUM(addon_forgone) AS BIGINT) AS forgone, CAST(SUM(creator_earnings) AS BIGINT) AS creator, \
                CAST(SUM(provider_cost_micro_usd) AS BIGINT) AS cost \
         FROM charges WHERE created_at >= $1 AND created_at < $2 \
         GROUP BY model_id, free ORDER BY model_id",
    )
    .bind::<Timestamp, _>(from)
    .bind::<Timestamp, _>(to)
    .load(conn)?;
    let rate = ctx.settings.credit_rate.usd_per_credit();
    let overflow = || ServiceError::Internal("revenue totals overflow".into());
    let mut totals = RevenueLine { provider_cost_usd: "0".into(), ..Default::default() };
    let mut by_model: Vec<RevenueLine> = Vec::new();
    for r in &rows {
        if by_model.last().and_then(|l| l.model.as_deref()) != Some(r.model_id.as_str()) {
            by_model.push(RevenueLine {
                model: Some(r.model_id.clone()),
                provider_cost_usd: "0".into(),
                ..Default::default()
            });
        }
        by_model.last_mut().ok_or_else(overflow)?.add(r).ok_or_else(overflow)?;
        totals.add(r).ok_or_else(overflow)?;
    }
    totals.finish(rate);
    for line in &mut by_model {
        line.finish(rate);
    }
    Ok(RevenueReport {
        from: from.and_utc(),
        to: to.and_utc(),
        credit_usd: rate.to_string(),
        totals,
        by_model,
    })
}
