//! Operator reports: revenue by model over a time range, from the charges
//! (each of which recorded the prices it used). Sums are exact whatever
//! their size (see `db::sums`).
#![deny(clippy::arithmetic_side_effects)]

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Text, Timestamp};
use rust_decimal::Decimal;
use serde::Serialize;
use utoipa::ToSchema;

use super::{Ctx, ServiceError, ServiceResult};
use crate::db::{sums, DbConn};
use crate::domain::CreditTotal;

/// Revenue over `[from, to)`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevenueReport {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// The USD value of one credit used for the USD columns.
    pub credit_usd: String,
    pub totals: RevenueLine,
    pub by_model: Vec<RevenueLine>,
    /// Paid credits that expired unspent in the range (breakage revenue),
    /// in credits.
    #[schema(value_type = String)]
    pub breakage: CreditTotal,
    /// `breakage` in USD.
    pub breakage_usd: String,
}

#[derive(QueryableByName)]
struct Breakage {
    #[diesel(sql_type = BigInt)]
    total_hi: i64,
    #[diesel(sql_type = BigInt)]
    total_lo: i64,
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
    /// Runtime infra and metered usage (tokens, tools, generations) charged
    /// to payers, in credits.
    #[schema(value_type = String)]
    pub infra_revenue: CreditTotal,
    /// The platform's share of add-ons, in credits.
    #[schema(value_type = String)]
    pub marketplace_share: CreditTotal,
    /// Runtime infra of free messages, borne by the platform, in credits.
    #[schema(value_type = String)]
    pub subsidies: CreditTotal,
    /// Add-ons creators forwent on free messages, in credits.
    #[schema(value_type = String)]
    pub addon_forgone: CreditTotal,
    /// Creators' part of add-ons, in credits.
    #[schema(value_type = String)]
    pub creator_earnings: CreditTotal,
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
    infra_hi: i64,
    #[diesel(sql_type = BigInt)]
    infra_lo: i64,
    #[diesel(sql_type = BigInt)]
    share_hi: i64,
    #[diesel(sql_type = BigInt)]
    share_lo: i64,
    #[diesel(sql_type = BigInt)]
    forgone_hi: i64,
    #[diesel(sql_type = BigInt)]
    forgone_lo: i64,
    #[diesel(sql_type = BigInt)]
    creator_hi: i64,
    #[diesel(sql_type = BigInt)]
    creator_lo: i64,
    #[diesel(sql_type = BigInt)]
    metered_hi: i64,
    #[diesel(sql_type = BigInt)]
    metered_lo: i64,
    #[diesel(sql_type = BigInt)]
    cost_hi: i64,
    #[diesel(sql_type = BigInt)]
    cost_lo: i64,
}

/// Micro-units (credits or USD) as an exact decimal.
fn micros(m: i128) -> Option<Decimal> {
    Decimal::try_from_i128_with_scale(m, 6).ok()
}

impl RevenueLine {
    fn add(&mut self, r: &Row) -> Option<()> {
        self.messages = self.messages.checked_add(r.n)?;
        let add = |a: &mut CreditTotal, hi: i64, lo: i64| -> Option<()> {
            *a = a.checked_add(CreditTotal::from_micros(sums::join(hi, lo)))?;
            Some(())
        };
        if r.free {
            self.free_messages = self.free_messages.checked_add(r.n)?;
            add(&mut self.subsidies, r.infra_hi, r.infra_lo)?;
        } else {
            self.paid_messages = self.paid_messages.checked_add(r.n)?;
            add(&mut self.infra_revenue, r.infra_hi, r.infra_lo)?;
        }
        // Metered parts are paid by the wallet, free message or not (their
        // sum is at most the charge's total, so it fits in a BIGINT).
        add(&mut self.infra_revenue, r.metered_hi, r.metered_lo)?;
        add(&mut self.marketplace_share, r.share_hi, r.share_lo)?;
        add(&mut self.addon_forgone, r.forgone_hi, r.forgone_lo)?;
        add(&mut self.creator_earnings, r.creator_hi, r.creator_lo)?;
        let cost: Decimal = self.provider_cost_usd.parse().ok()?;
        self.provider_cost_usd =
            cost.checked_add(micros(sums::join(r.cost_hi, r.cost_lo))?)?.normalize().to_string();
        Some(())
    }

    fn finish(&mut self, rate: Decimal) -> Option<()> {
        let credits = self.infra_revenue.checked_add(self.marketplace_share)?.to_decimal()?;
        let revenue = credits.checked_mul(rate)?;
        let cost: Decimal = self.provider_cost_usd.parse().ok()?;
        self.revenue_usd = revenue.normalize().to_string();
        self.provider_cost_usd = cost.normalize().to_string();
        self.margin_usd = revenue.checked_sub(cost)?.normalize().to_string();
        Some(())
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
    let rows: Vec<Row> = diesel::sql_query(format!(
        "SELECT model_id, free, COUNT(*) AS n, {}, {}, {}, {}, {}, {} \
         FROM charges WHERE created_at >= $1 AND created_at < $2 \
         GROUP BY model_id, free ORDER BY model_id",
        sums::select("runtime_infra", "infra"),
        sums::select("platform_share", "share"),
        sums::select("addon_forgone", "forgone"),
        sums::select("creator_earnings", "creator"),
        sums::select(
            "COALESCE(input_tokens_cost, 0) + COALESCE(output_tokens_cost, 0) \
             + COALESCE(tools_cost, 0) + COALESCE(generations_cost, 0)",
            "metered"
        ),
        sums::select("provider_cost_micro_usd", "cost"),
    ))
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
    totals.finish(rate).ok_or_else(overflow)?;
    for line in &mut by_model {
        line.finish(rate).ok_or_else(overflow)?;
    }
    let b: Breakage = diesel::sql_query(format!(
        "SELECT {} FROM postings WHERE account_id = $1 AND created_at >= $2 AND created_at < $3",
        sums::select("amount", "total")
    ))
    .bind::<BigInt, _>(ctx.platform.breakage_revenue.id)
    .bind::<Timestamp, _>(from)
    .bind::<Timestamp, _>(to)
    .get_result(conn)?;
    let breakage = CreditTotal::from_micros(sums::join(b.total_hi, b.total_lo));
    let breakage_usd =
        breakage.to_decimal().and_then(|c| c.checked_mul(rate)).ok_or_else(overflow)?.normalize().to_string();
    Ok(RevenueReport {
        from: from.and_utc(),
        to: to.and_utc(),
        credit_usd: rate.to_string(),
        totals,
        by_model,
        breakage,
        breakage_usd,
    })
}
