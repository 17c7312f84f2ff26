//! The closed sets of names the ledger and organizations use, stored as text
//! (conversions in `db::types`).

use std::fmt;
use std::str::FromStr;

/// Who owns an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, diesel::AsExpression, diesel::FromSqlRow)]
#[diesel(sql_type = diesel::sql_types::Text)]
pub enum OwnerType {
    Person,
    Org,
    Platform,
}

impl OwnerType {
    pub fn as_str(self) -> &'static str {
        match self {
            OwnerType::Person => "person",
            OwnerType::Org => "org",
            OwnerType::Platform => "platform",
        }
    }
}

impl FromStr for OwnerType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "person" => Ok(OwnerType::Person),
            "org" => Ok(OwnerType::Org),
            "platform" => Ok(OwnerType::Platform),
            other => Err(format!("unknown owner type '{other}'")),
        }
    }
}

/// The accounts of SPEC 2.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, diesel::AsExpression, diesel::FromSqlRow,
)]
#[diesel(sql_type = diesel::sql_types::Text)]
pub enum AccountKind {
    Wallet,
    EarningsPending,
    EarningsAvailable,
    EarningsInPayout,
    Cash,
    InfraRevenue,
    MarketplaceRevenue,
    SubsidyExpense,
    BonusExpense,
    Adjustments,
    Payouts,
    /// A wallet's reserved credits: what its open holds took out of it.
    Held,
    /// What captured holds could not collect from their wallets.
    UncollectedExpense,
    /// Paid credits that expired unspent.
    BreakageRevenue,
    /// What operators' promotional grants cost the platform.
    PromotionalExpense,
    /// Creators' shares of refunded charges the platform bore (their
    /// earnings no longer covered them).
    RefundExpense,
}

impl AccountKind {
    pub const ALL: [AccountKind; 16] = [
        AccountKind::Wallet,
        AccountKind::EarningsPending,
        AccountKind::EarningsAvailable,
        AccountKind::EarningsInPayout,
        AccountKind::Cash,
        AccountKind::InfraRevenue,
        AccountKind::MarketplaceRevenue,
        AccountKind::SubsidyExpense,
        AccountKind::BonusExpense,
        AccountKind::Adjustments,
        AccountKind::Payouts,
        AccountKind::Held,
        AccountKind::UncollectedExpense,
        AccountKind::BreakageRevenue,
        AccountKind::PromotionalExpense,
        AccountKind::RefundExpense,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::Wallet => "wallet",
            AccountKind::EarningsPending => "earnings_pending",
            AccountKind::EarningsAvailable => "earnings_available",
            AccountKind::EarningsInPayout => "earnings_in_payout",
            AccountKind::Cash => "cash",
            AccountKind::InfraRevenue => "infra_revenue",
            AccountKind::MarketplaceRevenue => "marketplace_revenue",
            AccountKind::SubsidyExpense => "subsidy_expense",
            AccountKind::BonusExpense => "bonus_expense",
            AccountKind::Adjustments => "adjustments",
            AccountKind::Payouts => "payouts",
            AccountKind::Held => "held",
            AccountKind::UncollectedExpense => "uncollected_expense",
            AccountKind::BreakageRevenue => "breakage_revenue",
            AccountKind::PromotionalExpense => "promotional_expense",
            AccountKind::RefundExpense => "refund_expense",
        }
    }

    /// Accounts whose balance a money movement must check keep a cached
    /// balance, updated with a guard in the same statement. The others
    /// (platform accounts touched by every charge, and a creator's pending
    /// earnings credited by every charge of a popular agent) keep none: their
    /// balance is the sum of their postings, so no charge queues on them.
    pub fn keeps_cached_balance(self) -> bool {
        matches!(
            self,
            AccountKind::Wallet
                | AccountKind::Held
                | AccountKind::EarningsAvailable
                | AccountKind::EarningsInPayout
        )
    }

    /// Accounts that may never be below zero (a wallet may only after a
    /// refund or dispute reversal, which freezes it).
    pub fn must_stay_non_negative(self) -> bool {
        matches!(
            self,
            AccountKind::Wallet
                | AccountKind::Held
                | AccountKind::EarningsPending
                | AccountKind::EarningsAvailable
                | AccountKind::EarningsInPayout
        )
    }

    pub fn is_platform(self) -> bool {
        !self.must_stay_non_negative()
    }
}

impl FromStr for AccountKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        AccountKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown account kind '{s}'"))
    }
}

impl fmt::Display for AccountKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// Shown as a transaction's `type`; the OpenAPI document names it `TransactionType`.
/// What a transaction records (its journal entry's kind).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, utoipa::ToSchema, diesel::AsExpression, diesel::FromSqlRow,
)]
#[diesel(sql_type = diesel::sql_types::Text)]
#[schema(as = TransactionType, rename_all = "snake_case")]
pub enum EntryKind {
    Adjustment,
    Charge,
    FreeMessage,
    TopUp,
    Refund,
    Dispute,
    DisputeWon,
    EarningsSettlement,
    Payout,
    PayoutPaid,
    PayoutReversal,
    Hold,
    HoldRelease,
    /// An operator's promotional grant of credits.
    Grant,
    /// The unspent remainder of an expired grant leaving the wallet.
    Expiry,
    /// An operator's refund of (part of) a charge.
    ChargeRefund,
}

impl EntryKind {
    pub const ALL: [EntryKind; 16] = [
        EntryKind::Adjustment,
        EntryKind::Charge,
        EntryKind::FreeMessage,
        EntryKind::TopUp,
        EntryKind::Refund,
        EntryKind::Dispute,
        EntryKind::DisputeWon,
        EntryKind::EarningsSettlement,
        EntryKind::Payout,
        EntryKind::PayoutPaid,
        EntryKind::PayoutReversal,
        EntryKind::Hold,
        EntryKind::HoldRelease,
        EntryKind::Grant,
        EntryKind::Expiry,
        EntryKind::ChargeRefund,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Adjustment => "adjustment",
            EntryKind::Charge => "charge",
            EntryKind::FreeMessage => "free_message",
            EntryKind::TopUp => "top_up",
            EntryKind::Refund => "refund",
            EntryKind::Dispute => "dispute",
            EntryKind::DisputeWon => "dispute_won",
            EntryKind::EarningsSettlement => "earnings_settlement",
            EntryKind::Payout => "payout",
            EntryKind::PayoutPaid => "payout_paid",
            EntryKind::PayoutReversal => "payout_reversal",
            EntryKind::Hold => "hold",
            EntryKind::HoldRelease => "hold_release",
            EntryKind::Grant => "grant",
            EntryKind::Expiry => "expiry",
            EntryKind::ChargeRefund => "charge_refund",
        }
    }
}

impl FromStr for EntryKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        EntryKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown transaction type '{s}'"))
    }
}

/// Where a hold is: `open` until exactly one of capture, release or expiry
/// ends it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, utoipa::ToSchema, diesel::AsExpression, diesel::FromSqlRow,
)]
#[diesel(sql_type = diesel::sql_types::Text)]
#[schema(rename_all = "snake_case")]
pub enum HoldStatus {
    Open,
    Captured,
    Released,
    Expired,
}

impl HoldStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldStatus::Open => "open",
            HoldStatus::Captured => "captured",
            HoldStatus::Released => "released",
            HoldStatus::Expired => "expired",
        }
    }
}

impl FromStr for HoldStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [HoldStatus::Open, HoldStatus::Captured, HoldStatus::Released, HoldStatus::Expired]
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown hold status '{s}'"))
    }
}

/// Who may see and use an agent: its organization's members only, or anyone
/// on the marketplace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, diesel::AsExpression, diesel::FromSqlRow)]
#[diesel(sql_type = diesel::sql_types::Text)]
pub enum Visibility {
    Private,
    Public,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Private => "private",
            Visibility::Public => "public",
        }
    }
}

impl FromStr for Visibility {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "private" => Ok(Visibility::Private),
            "public" => Ok(Visibility::Public),
            other => Err(format!("unknown visibility '{other}' (private or public)")),
        }
    }
}

/// A member's role in an organization.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, diesel::AsExpression, diesel::FromSqlRow,
)]
#[diesel(sql_type = diesel::sql_types::Text)]
pub enum OrgRole {
    Member,
    Admin,
    Owner,
}

impl OrgRole {
    pub fn as_str(self) -> &'static str {
        match self {
            OrgRole::Owner => "owner",
            OrgRole::Admin => "admin",
            OrgRole::Member => "member",
        }
    }

    /// Owners and admins manage members, agents and payouts.
    pub fn can_manage(self) -> bool {
        matches!(self, OrgRole::Owner | OrgRole::Admin)
    }
}

impl FromStr for OrgRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "owner" => Ok(OrgRole::Owner),
            "admin" => Ok(OrgRole::Admin),
            "member" => Ok(OrgRole::Member),
            other => Err(format!("unknown role '{other}' (owner, admin or member)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in AccountKind::ALL {
            assert_eq!(k.as_str().parse::<AccountKind>().unwrap(), k);
        }
        for k in EntryKind::ALL {
            assert_eq!(k.as_str().parse::<EntryKind>().unwrap(), k);
        }
        assert!("boss".parse::<OrgRole>().is_err());
    }

    #[test]
    fn hot_accounts_keep_no_cached_balance() {
        assert!(AccountKind::Wallet.keeps_cached_balance());
        assert!(!AccountKind::InfraRevenue.keeps_cached_balance());
        assert!(!AccountKind::EarningsPending.keeps_cached_balance());
        assert!(AccountKind::EarningsAvailable.keeps_cached_balance());
    }
}
