//! Operator adjustments: an audited credit or debit of a wallet against the
//! platform's `adjustments` account, with a reason and the operator's id.
#![deny(clippy::arithmetic_side_effects)]

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::history::TransactionReferences;
use super::idempotency::RequestKey;
use super::wallets::find_by_public_id;
use super::{Caller, Ctx, ServiceError, ServiceResult};
use crate::db::WriteTx;
use crate::domain::ids::{entry_id, new_id, transaction_id};
use crate::domain::text::checked_text;
use crate::domain::{AccountKind, Credits, EntryKind};
use crate::domain::{GrantCategory, GrantSource};
use crate::ledger::{self, AccountRef, GrantSpec, Grants, NewEntry, Overdraft};

/// A recorded adjustment.
#[derive(Debug, Serialize, ToSchema)]
pub struct Adjustment {
    /// `adj_` id.
    pub id: String,
    pub wallet_id: String,
    /// Signed credits: positive credits the wallet, negative debits it.
    #[schema(value_type = String, example = "10")]
    pub amount: Credits,
    pub reason: String,
    /// The operator who made it.
    pub operator_id: String,
    /// The wallet's balance after it.
    #[schema(value_type = String, example = "60")]
    pub balance_after: Credits,
    /// The wallet transaction it created.
    pub transaction_id: String,
    pub entry_id: String,
    pub created_at: DateTime<Utc>,
}

/// Creates an adjustment; runs inside the idempotent request's transaction.
/// A debit below zero is refused (402 `insufficient_funds`).
pub fn create_adjustment(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    operator: &Caller,
    wallet_id: &str,
    amount: Credits,
    reason: &str,
    request: &RequestKey,
) -> ServiceResult<Adjustment> {
    let reason = checked_text("reason", reason, 500, true).map_err(ServiceError::Validation)?;
    if amount.is_zero() {
        return Err(ServiceError::Validation("amount must not be zero".into()));
    }
    let counter =
        amount.checked_neg().ok_or_else(|| ServiceError::Validation("amount is out of range".into()))?;
    let wallet = find_by_public_id(tx, wallet_id)?;
    let wallet_ref = AccountRef { id: wallet.id, kind: AccountKind::Wallet };
    let adjustment_id = new_id("adj");
    let references =
        TransactionReferences { adjustment_id: Some(adjustment_id.clone()), ..Default::default() };
    let posted = ledger::post(
        tx,
        NewEntry {
            spend: None,
            kind: EntryKind::Adjustment,
            legs: vec![wallet_ref.leg(amount), ctx.platform.adjustments.leg(counter)],
            overdraft: Overdraft::Refuse,
            reverses: None,
            request_key: Some(request.as_str()),
            actor: Some(&operator.id),
            memo: Some(reason),
            metadata: serde_json::to_value(&references).unwrap_or_default(),
            grants: if amount.is_positive() {
                Grants::Open(vec![GrantSpec {
                    category: GrantCategory::Paid,
                    amount,
                    expires_at: None,
                    source: GrantSource::Adjustment,
                    source_id: Some(adjustment_id.clone()),
                    funded_by: Some(ctx.platform.adjustments.id),
                }])
            } else {
                Grants::Draw { hold: None }
            },
        },
    )
    .map_err(|e| ServiceError::from_ledger(e, wallet_id))?;
    let leg = posted.leg_of(wallet.id).ok_or_else(|| ServiceError::Internal("posting missing".into()))?;
    tracing::info!(wallet_id, %amount, operator = %operator.id, reason, "adjustment posted");
    Ok(Adjustment {
        id: adjustment_id,
        wallet_id: wallet_id.to_string(),
        amount,
        reason: reason.to_string(),
        operator_id: operator.id.clone(),
        balance_after: leg.balance_after.unwrap_or_default(),
        transaction_id: transaction_id(leg.posting_id),
        entry_id: entry_id(posted.entry_id),
        created_at: posted.created_at.and_utc(),
    })
}
