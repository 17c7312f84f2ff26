//! The price of one message and the split of the publisher add-on.
#![deny(clippy::arithmetic_side_effects)]

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

use super::money::Credits;

/// What one paid message costs and where each part goes. The parts add up
/// exactly to `total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessagePrice {
    pub runtime_infra: Credits,
    /// The add-on charged (zero on a private agent or when the payer
    /// organization owns the agent).
    pub publisher_addon: Credits,
    /// The platform's part of the add-on.
    pub platform_share: Credits,
    /// The creator's part of the add-on: rounded down to the micro-credit.
    pub creator_earnings: Credits,
    pub total: Credits,
}

/// Splits `addon` so that the creator gets `(1 - share) * addon` rounded
/// down and the platform the rest; the two parts always sum to `addon`.
pub fn split_addon(addon: Credits, share: Decimal) -> (Credits, Credits) {
    let creator = Decimal::ONE
        .checked_sub(share)
        .and_then(|fraction| Decimal::from(addon.micros()).checked_mul(fraction))
        .and_then(|c| c.floor().to_i64())
        .unwrap_or(0)
        .clamp(0, addon.micros().max(0));
    // 0 <= creator <= addon: the platform's part cannot overflow.
    let platform = addon.micros().checked_sub(creator).unwrap_or(0);
    (Credits::from_micros(platform), Credits::from_micros(creator))
}

/// The price of a paid message.
pub fn price_message(runtime_infra: Credits, addon: Credits, share: Decimal) -> Option<MessagePrice> {
    let (platform_share, creator_earnings) = split_addon(addon, share);
    Some(MessagePrice {
        runtime_infra,
        publisher_addon: addon,
        platform_share,
        creator_earnings,
        total: runtime_infra.checked_add(addon)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share() -> Decimal {
        Decimal::new(30, 2)
    }

    #[test]
    fn the_spec_example_splits_exactly() {
        let p =
            price_message(Credits::parse("0.3").unwrap(), Credits::parse("1.0").unwrap(), share()).unwrap();
        assert_eq!(p.total.to_string(), "1.3");
        assert_eq!(p.platform_share.to_string(), "0.3");
        assert_eq!(p.creator_earnings.to_string(), "0.7");
    }

    #[test]
    fn the_creator_part_rounds_down_and_nothing_is_lost() {
        let (platform, creator) = split_addon(Credits::from_micros(1), share());
        assert_eq!((platform.micros(), creator.micros()), (1, 0));
        for micros in [0, 1, 2, 3, 7, 10, 33, 999_999, 1_000_001, 123_456_789] {
            let (platform, creator) = split_addon(Credits::from_micros(micros), share());
            assert_eq!(platform.micros() + creator.micros(), micros);
            assert_eq!(creator.micros(), micros * 7 / 10, "{micros}");
        }
        let (platform, creator) = split_addon(Credits::from_micros(10), Decimal::ZERO);
        assert_eq!((platform.micros(), creator.micros()), (0, 10));
        let (platform, creator) = split_addon(Credits::from_micros(10), Decimal::ONE);
        assert_eq!((platform.micros(), creator.micros()), (10, 0));
    }
}
