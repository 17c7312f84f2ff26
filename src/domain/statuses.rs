//! Where an order, a payout or a subscription stands, and how a top-up is
//! paid: closed sets of names stored as text (conversions in `db::types`),
//! so a misspelt status does not compile and an unknown stored one is an
//! error, never a default. Each list is what the table's CHECK constraint
//! allows (subscriptions: what Stripe's API version sends).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A closed set of names: the enum, `ALL`, `as_str`, `FromStr` (naming the
/// set in its error) and `Display`.
macro_rules! closed_set {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal,)*
        }
    ) => {
        $(#[$meta])*
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| format!(concat!("unknown ", $what, " '{}'"), s))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

closed_set! {
    /// Where a top-up stands.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, ToSchema, diesel::AsExpression, diesel::FromSqlRow)]
    #[diesel(sql_type = diesel::sql_types::Text)]
    #[serde(rename_all = "snake_case")]
    pub enum TopUpStatus("top-up status") {
        Pending = "pending",
        Paid = "paid",
        Failed = "failed",
        Refunded = "refunded",
        Disputed = "disputed",
        AmountMismatch = "amount_mismatch",
        Rejected = "rejected",
        Expired = "expired",
    }
}

closed_set! {
    /// How a top-up is paid.
    #[derive(
        Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, diesel::AsExpression, diesel::FromSqlRow,
    )]
    #[diesel(sql_type = diesel::sql_types::Text)]
    #[serde(rename_all = "lowercase")]
    pub enum TopUpMethod("top-up method") {
        /// Stripe Checkout; credited by Stripe's webhook.
        Stripe = "stripe",
        /// A payment order an operator settles once paid (e.g. an invoice).
        Manual = "manual",
    }
}

closed_set! {
    /// Where an auto top-up order stands: `pending` (recorded, the payment
    /// not yet asked for) and `processing` (Stripe has the PaymentIntent,
    /// its webhook settles it) are open; at most one is open per wallet.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, ToSchema, diesel::AsExpression, diesel::FromSqlRow)]
    #[diesel(sql_type = diesel::sql_types::Text)]
    #[serde(rename_all = "snake_case")]
    pub enum AutoTopUpStatus("auto top-up order status") {
        Pending = "pending",
        Processing = "processing",
        Paid = "paid",
        Failed = "failed",
        /// Not sent: auto top-up was turned off, the payment method or pack
        /// went away, or the wallet was frozen before it was sent.
        Canceled = "canceled",
    }
}

closed_set! {
    /// Where a payout stands.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, ToSchema, diesel::AsExpression, diesel::FromSqlRow)]
    #[diesel(sql_type = diesel::sql_types::Text)]
    #[serde(rename_all = "snake_case")]
    pub enum PayoutStatus("payout status") {
        Pending = "pending",
        InTransit = "in_transit",
        Paid = "paid",
        Failed = "failed",
    }
}

closed_set! {
    /// A Stripe subscription's status, as the pinned API version sends it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, diesel::AsExpression, diesel::FromSqlRow)]
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub enum SubscriptionStatus("subscription status") {
        Incomplete = "incomplete",
        IncompleteExpired = "incomplete_expired",
        Trialing = "trialing",
        Active = "active",
        PastDue = "past_due",
        Canceled = "canceled",
        Unpaid = "unpaid",
        Paused = "paused",
    }
}

impl SubscriptionStatus {
    /// An ended subscription never comes back: later events change nothing.
    pub const ENDED: [SubscriptionStatus; 2] =
        [SubscriptionStatus::Canceled, SubscriptionStatus::IncompleteExpired];

    pub fn has_ended(self) -> bool {
        SubscriptionStatus::ENDED.contains(&self)
    }
}

closed_set! {
    /// Where a subscription Checkout tally opened stands: `open` until
    /// Stripe says it completed or expired.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, diesel::AsExpression, diesel::FromSqlRow)]
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub enum CheckoutStatus("checkout status") {
        Open = "open",
        Complete = "complete",
        Expired = "expired",
    }
}

closed_set! {
    /// An operator's freeze or unfreeze of a wallet, as its audit keeps it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, diesel::AsExpression, diesel::FromSqlRow)]
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub enum FreezeAction("wallet audit action") {
        Freeze = "freeze",
        Unfreeze = "unfreeze",
    }
}

closed_set! {
    /// What kind of credits a grant holds: bought (`paid`) or given
    /// (`promotional`: a top-up's bonus, an operator's grant). Promotional
    /// credits are spent first; an expired paid remainder is breakage
    /// revenue, an expired promotional one goes back to what funded it.
    #[derive(
        Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, diesel::AsExpression, diesel::FromSqlRow,
    )]
    #[diesel(sql_type = diesel::sql_types::Text)]
    #[serde(rename_all = "snake_case")]
    pub enum GrantCategory("grant category") {
        Paid = "paid",
        Promotional = "promotional",
    }
}

closed_set! {
    /// How long the credits of a pack stay spendable after they are
    /// credited.
    #[derive(
        Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema, diesel::AsExpression, diesel::FromSqlRow,
    )]
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub enum Validity("validity") {
        #[serde(rename = "30d")]
        Days30 = "30d",
        #[serde(rename = "90d")]
        Days90 = "90d",
        #[serde(rename = "lifetime")]
        Lifetime = "lifetime",
    }
}

impl Validity {
    /// How long credits of this validity last; `None` for lifetime.
    pub fn duration(self) -> Option<chrono::Duration> {
        match self {
            Validity::Days30 => Some(chrono::Duration::days(30)),
            Validity::Days90 => Some(chrono::Duration::days(90)),
            Validity::Lifetime => None,
        }
    }
}

closed_set! {
    /// What made a grant.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, ToSchema, diesel::AsExpression, diesel::FromSqlRow)]
    #[diesel(sql_type = diesel::sql_types::Text)]
    #[serde(rename_all = "snake_case")]
    pub enum GrantSource("grant source") {
        /// The credits of a paid top-up.
        TopUp = "top_up",
        /// The bonus credits of a paid top-up.
        TopUpBonus = "top_up_bonus",
        /// An operator's adjustment that credits.
        Adjustment = "adjustment",
        /// An operator's promotional grant.
        Promotion = "promotion",
        /// A wallet's balance when grants were introduced.
        Opening = "opening",
        /// Credits given back (a dispute won) whose earlier draws no
        /// grant can take back.
        Returned = "returned",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_errors() {
        for s in TopUpStatus::ALL {
            assert_eq!(s.as_str().parse::<TopUpStatus>().unwrap(), *s);
        }
        for s in PayoutStatus::ALL {
            assert_eq!(s.as_str().parse::<PayoutStatus>().unwrap(), *s);
        }
        for s in SubscriptionStatus::ALL {
            assert_eq!(s.as_str().parse::<SubscriptionStatus>().unwrap(), *s);
        }
        assert_eq!("in_trasit".parse::<PayoutStatus>(), Err("unknown payout status 'in_trasit'".into()));
        assert!("PAID".parse::<TopUpStatus>().is_err());
        assert!("".parse::<TopUpMethod>().is_err());
    }
}
