//! What a wallet paid for, grouped: `GET /v1/wallets/{id}/usage`. Messages
//! (paid, free), metered usage (tokens, generations, tool calls) and the
//! credits spent, net of operator refunds, per day, model, agent or member.

use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::orgs::require_admin;
use super::wallets::{load_for, Access};
use super::{Caller, ServiceError, ServiceResult};
use crate::db::usage::{usage_by, UsageGroup};
use crate::db::{self, sums, DbConn};
use crate::domain::{CreditTotal, OwnerType};

/// The longest period one report covers.
pub const MAX_SPAN_DAYS: i64 = 366;
/// The period when `from` is absent: this many days before `to`.
pub const DEFAULT_SPAN_DAYS: i64 = 30;

/// One group's usage.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageLine {
    /// The group: a UTC day (`2026-11-27`), a model id, an agent id or a
    /// member's id, as `group_by` asked.
    #[schema(example = "2026-11-27")]
    pub key: String,
    /// Messages charged at their price.
    #[schema(example = 12)]
    pub paid_messages: i64,
    /// Free messages (their metered parts, if any, are still charged).
    #[schema(example = 3)]
    pub free_messages: i64,
    /// Input tokens of metered messages.
    #[schema(example = 48000)]
    pub input_tokens: i64,
    /// Output tokens of metered messages.
    #[schema(example = 9100)]
    pub output_tokens: i64,
    /// Generated assets (images, videos) of metered messages.
    #[schema(example = 0)]
    pub generations: i64,
    /// Tool calls of metered messages, all tools together.
    #[schema(example = 4)]
    pub tool_calls: i64,
    /// What the wallet paid for these messages (a capture beyond its hold
    /// counts only what the wallet could pay).
    #[schema(value_type = String, example = "41.5")]
    pub credits_charged: CreditTotal,
    /// What operators refunded of these charges so far (counted in the
    /// group of the charge, whenever the refund was made).
    #[schema(value_type = String, example = "1.5")]
    pub credits_refunded: CreditTotal,
    /// `credits_charged - credits_refunded`: what the messages cost in the end.
    #[schema(value_type = String, example = "40")]
    pub credits_spent: CreditTotal,
}

/// A wallet's usage over a period.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport {
    #[schema(example = "wal_01J9Z")]
    pub wallet_id: String,
    /// `day`, `model`, `agent` or `member`.
    #[schema(example = "day")]
    pub group_by: String,
    /// Start (inclusive).
    pub from: DateTime<Utc>,
    /// End (exclusive).
    pub to: DateTime<Utc>,
    /// One line per group with charges, in key order (days oldest first).
    pub data: Vec<UsageLine>,
}

/// The period asked, checked: `to` defaults to now, `from` to
/// [`DEFAULT_SPAN_DAYS`] before `to`; `from` before `to`, at most
/// [`MAX_SPAN_DAYS`] apart.
pub fn period(
    from: Option<NaiveDateTime>,
    to: Option<NaiveDateTime>,
) -> ServiceResult<(NaiveDateTime, NaiveDateTime)> {
    let to = to.unwrap_or_else(db::now);
    let from = match from {
        Some(f) => f,
        None => to
            .checked_sub_signed(Duration::days(DEFAULT_SPAN_DAYS))
            .ok_or_else(|| ServiceError::Validation("to is too early".into()))?,
    };
    if from >= to {
        return Err(ServiceError::Validation("from must be before to".into()));
    }
    if to.signed_duration_since(from) > Duration::days(MAX_SPAN_DAYS) {
        return Err(ServiceError::Validation(format!(
            "from and to may be at most {MAX_SPAN_DAYS} days apart"
        )));
    }
    Ok((from, to))
}

/// `GET /v1/wallets/{id}/usage`: whoever may read the wallet; per member
/// only for an organization's wallet, and only for its owners and admins.
pub fn wallet_usage(
    conn: &mut DbConn,
    caller: &Caller,
    wallet_id: &str,
    from: Option<NaiveDateTime>,
    to: Option<NaiveDateTime>,
    group: UsageGroup,
) -> ServiceResult<UsageReport> {
    let (from, to) = period(from, to)?;
    let wallet = load_for(conn, caller, wallet_id, Access::Read)?;
    if group == UsageGroup::Member {
        if wallet.owner_type != OwnerType::Org {
            return Err(ServiceError::Validation(
                "group_by=member is for an organization's wallet; this one is a person's".into(),
            ));
        }
        require_admin(conn, &wallet.owner_id, &caller.id)?;
    }
    let rows = usage_by(conn, wallet.id, from, to, group)?;
    let data = rows
        .into_iter()
        .map(|r| {
            let charged = sums::join(r.charged_hi, r.charged_lo);
            let refunded = sums::join(r.refunded_hi, r.refunded_lo);
            UsageLine {
                key: r.key,
                paid_messages: r.paid_messages,
                free_messages: r.free_messages,
                input_tokens: r.input_tokens,
                output_tokens: r.output_tokens,
                generations: r.generations,
                tool_calls: r.tool_calls,
                credits_charged: CreditTotal::from_micros(charged),
                credits_refunded: CreditTotal::from_micros(refunded),
                credits_spent: CreditTotal::from_micros(charged.saturating_sub(refunded)),
            }
        })
        .collect();
    Ok(UsageReport {
        wallet_id: wallet_id.to_string(),
        group_by: match group {
            UsageGroup::Day => "day",
            UsageGroup::Model => "model",
            UsageGroup::Agent => "agent",
            UsageGroup::Member => "member",
        }
        .into(),
        from: from.and_utc(),
        to: to.and_utc(),
        data,
    })
}
