//! The price of one message (flat, or metered by its usage) and the split
//! of the publisher add-on.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

use super::money::{Credits, MICROS_PER_CREDIT};
use super::usage::Usage;

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

/// A model's prices: per message, and the metered rates it has (`None`: the
/// model does not price that part, and a usage of it is refused rather than
/// free).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModelRates {
    pub runtime_infra: Credits,
    /// Credits per million input tokens.
    pub input_per_mtok: Option<Credits>,
    /// Credits per million output tokens.
    pub output_per_mtok: Option<Credits>,
    /// Credits per generated asset.
    pub per_generation: Option<Credits>,
}

/// What one metered message costs, part by part. The parts
/// (`runtime_infra`, `input_tokens`, `output_tokens`, `tools`,
/// `generations`, `platform_share`, `creator_earnings`) add up exactly to
/// `total`; `publisher_addon` is `platform_share + creator_earnings`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MeteredPrice {
    pub runtime_infra: Credits,
    /// `ceil(input_tokens x input_per_mtok / 10^6)` to the micro-credit.
    pub input_tokens: Credits,
    /// `ceil(output_tokens x output_per_mtok / 10^6)` to the micro-credit.
    pub output_tokens: Credits,
    /// The sum over tools of price x calls.
    pub tools: Credits,
    /// `per_generation x generations`.
    pub generations: Credits,
    pub publisher_addon: Credits,
    /// The platform's part of the add-on.
    pub platform_share: Credits,
    /// The creator's part of the add-on, rounded down.
    pub creator_earnings: Credits,
    pub total: Credits,
}

/// Why a usage cannot be priced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    /// The usage has a part the model has no rate for.
    #[error("model does not price {0}: it has no {1} rate")]
    NotMetered(&'static str, &'static str),
    #[error("unknown tool '{0}'")]
    UnknownTool(String),
    /// A negative rate or price, or a price past the range of an amount.
    #[error("the price is out of range")]
    OutOfRange,
}

/// A free message: the platform covers the per-message runtime infra (the
/// subsidy) and the creator forgoes the add-on; the metered parts (tokens,
/// tools, generations) are still the payer's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreeMessage {
    /// What the payer pays: the metered parts only.
    pub price: MeteredPrice,
    /// The runtime infra the platform's `subsidy_expense` pays.
    pub subsidy: Credits,
    /// The add-on the creator forgoes.
    pub addon_forgone: Credits,
}

impl MeteredPrice {
    /// The parts that add up to `total`, in order: runtime infra, input
    /// tokens, output tokens, tools, generations, platform share, creator.
    pub fn parts(&self) -> [Credits; 7] {
        [
            self.runtime_infra,
            self.input_tokens,
            self.output_tokens,
            self.tools,
            self.generations,
            self.platform_share,
            self.creator_earnings,
        ]
    }

    /// Tokens, tools and generations together: the platform's usage revenue.
    pub fn metered(&self) -> Option<Credits> {
        self.input_tokens
            .checked_add(self.output_tokens)?
            .checked_add(self.tools)?
            .checked_add(self.generations)
    }

    /// Everything that goes to infra revenue: runtime infra and the metered parts.
    pub fn infra_revenue(&self) -> Option<Credits> {
        self.runtime_infra.checked_add(self.metered()?)
    }

    /// This price as a free message ([`FreeMessage`]).
    pub fn as_free(&self) -> Option<FreeMessage> {
        let metered = self.metered()?;
        Some(FreeMessage {
            price: MeteredPrice {
                runtime_infra: Credits::ZERO,
                publisher_addon: Credits::ZERO,
                platform_share: Credits::ZERO,
                creator_earnings: Credits::ZERO,
                total: metered,
                ..*self
            },
            subsidy: self.runtime_infra,
            addon_forgone: self.publisher_addon,
        })
    }
}

/// `ceil(tokens x rate_micros / 10^6)`: the token cost in micro-credits,
/// rounded up to the next micro-credit (never in the payer's favour, and
/// never by a whole micro-credit or more against them).
fn token_cost(
    tokens: u64,
    rate: Option<Credits>,
    what: &'static str,
    rate_name: &'static str,
) -> Result<i128, PricingError> {
    let Some(rate) = rate else {
        return if tokens == 0 { Ok(0) } else { Err(PricingError::NotMetered(what, rate_name)) };
    };
    if rate.is_negative() {
        return Err(PricingError::OutOfRange);
    }
    let per = i128::from(MICROS_PER_CREDIT);
    let product =
        i128::from(tokens).checked_mul(i128::from(rate.micros())).ok_or(PricingError::OutOfRange)?;
    // product >= 0 and per > 0: ceil(a / b) = (a + b - 1) / b.
    product
        .checked_add(per.checked_sub(1).ok_or(PricingError::OutOfRange)?)
        .and_then(|n| n.checked_div(per))
        .ok_or(PricingError::OutOfRange)
}

/// `price x count`, for a non-negative price.
fn times(price: Credits, count: u64) -> Result<i128, PricingError> {
    if price.is_negative() {
        return Err(PricingError::OutOfRange);
    }
    i128::from(price.micros()).checked_mul(i128::from(count)).ok_or(PricingError::OutOfRange)
}

fn credits(micros: i128) -> Result<Credits, PricingError> {
    i64::try_from(micros).map(Credits::from_micros).map_err(|_| PricingError::OutOfRange)
}

/// The price of one message with its usage:
/// `runtime_infra + ceil(input_tokens x input_per_mtok / 10^6) +
/// ceil(output_tokens x output_per_mtok / 10^6) + sum(tool price x calls) +
/// per_generation x generations + addon`, each ceiling taken to the
/// micro-credit, in exact `i128` arithmetic; the add-on is split as
/// [`split_addon`] does. Tokens on a model without that token rate, or
/// generations without `per_generation`, are [`PricingError::NotMetered`];
/// a tool missing from `tool_prices` is [`PricingError::UnknownTool`]. A
/// usage of all zeros costs the flat price `runtime_infra + addon` on any
/// model.
pub fn price_metered(
    rates: &ModelRates,
    tool_prices: &BTreeMap<String, Credits>,
    addon: Credits,
    share: Decimal,
    usage: &Usage,
) -> Result<MeteredPrice, PricingError> {
    if rates.runtime_infra.is_negative() || addon.is_negative() {
        return Err(PricingError::OutOfRange);
    }
    let input = token_cost(usage.input_tokens, rates.input_per_mtok, "input tokens", "input_per_mtok")?;
    let output = token_cost(usage.output_tokens, rates.output_per_mtok, "output tokens", "output_per_mtok")?;
    let mut tools: i128 = 0;
    for (id, calls) in &usage.tool_calls {
        let price = tool_prices.get(id).ok_or_else(|| PricingError::UnknownTool(id.clone()))?;
        tools = tools.checked_add(times(*price, *calls)?).ok_or(PricingError::OutOfRange)?;
    }
    let generations = match rates.per_generation {
        Some(price) => times(price, usage.generations)?,
        None if usage.generations == 0 => 0,
        None => return Err(PricingError::NotMetered("generations", "per_generation")),
    };
    let (platform_share, creator_earnings) = split_addon(addon, share);
    let total = [
        input,
        output,
        tools,
        generations,
        i128::from(rates.runtime_infra.micros()),
        i128::from(addon.micros()),
    ]
    .into_iter()
    .try_fold(0i128, |sum, part| sum.checked_add(part))
    .ok_or(PricingError::OutOfRange)?;
    Ok(MeteredPrice {
        runtime_infra: rates.runtime_infra,
        input_tokens: credits(input)?,
        output_tokens: credits(output)?,
        tools: credits(tools)?,
        generations: credits(generations)?,
        publisher_addon: addon,
        platform_share,
        creator_earnings,
        total: credits(total)?,
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

// The tests' oracle computes in plain i128 on bounded inputs, where nothing
// can overflow: it must not share the checked code it checks.
#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod metered_tests {
    use super::*;
    use crate::domain::usage::{MAX_CALLS_PER_TOOL, MAX_GENERATIONS, MAX_TOKENS};
    use proptest::prelude::*;

    fn c(text: &str) -> Credits {
        Credits::parse(text).unwrap()
    }

    fn worked_rates() -> ModelRates {
        ModelRates {
            runtime_infra: c("0.01"),
            input_per_mtok: Some(c("0.15")),
            output_per_mtok: Some(c("0.6")),
            per_generation: Some(c("0.04")),
        }
    }

    fn web_search() -> BTreeMap<String, Credits> {
        BTreeMap::from([("web_search".to_string(), c("0.01"))])
    }

    fn usage(input: u64, output: u64, tools: &[(&str, u64)], generations: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            tool_calls: tools.iter().map(|(id, n)| (id.to_string(), *n)).collect(),
            generations,
        }
    }

    /// The README's worked example ("Metered messages").
    #[test]
    fn the_worked_example() {
        let u = usage(1234, 567, &[("web_search", 2)], 1);
        let p = price_metered(&worked_rates(), &web_search(), c("0.05"), Decimal::new(30, 2), &u).unwrap();
        let shown: Vec<String> = p.parts().iter().map(|x| x.to_string()).collect();
        // 1234 x 0.15 / 10^6 = 0.0001851 -> 0.000186; 567 x 0.6 / 10^6 = 0.0003402 -> 0.000341.
        assert_eq!(shown, ["0.01", "0.000186", "0.000341", "0.02", "0.04", "0.015", "0.035"]);
        assert_eq!((p.publisher_addon.to_string(), p.total.to_string()), ("0.05".into(), "0.120527".into()));
        assert_eq!(p.infra_revenue().unwrap().to_string(), "0.070527");
        let free = p.as_free().unwrap();
        assert_eq!(free.price.total.to_string(), "0.060527");
        assert_eq!(
            (free.subsidy.to_string(), free.addon_forgone.to_string()),
            ("0.01".into(), "0.05".into())
        );
    }

    #[test]
    fn unmetered_parts_are_refused_and_zero_usage_is_flat() {
        let flat = ModelRates { runtime_infra: c("0.3"), ..Default::default() };
        let share = Decimal::new(30, 2);
        let none = BTreeMap::new();
        let p = price_metered(&flat, &none, c("1"), share, &Usage::default()).unwrap();
        let plain = price_message(c("0.3"), c("1"), share).unwrap();
        assert_eq!(
            (p.total, p.platform_share, p.creator_earnings),
            (plain.total, plain.platform_share, plain.creator_earnings)
        );
        let err = |u: &Usage| price_metered(&flat, &none, c("1"), share, u).unwrap_err();
        assert_eq!(err(&usage(1, 0, &[], 0)), PricingError::NotMetered("input tokens", "input_per_mtok"));
        assert_eq!(err(&usage(0, 1, &[], 0)), PricingError::NotMetered("output tokens", "output_per_mtok"));
        assert_eq!(err(&usage(0, 0, &[], 1)), PricingError::NotMetered("generations", "per_generation"));
        assert_eq!(
            err(&usage(0, 0, &[("web_search", 1)], 0)),
            PricingError::UnknownTool("web_search".into())
        );
        // A rate of zero is a price: tokens are free on purpose.
        let zero = ModelRates { input_per_mtok: Some(Credits::ZERO), ..flat };
        assert_eq!(price_metered(&zero, &none, c("1"), share, &usage(5, 0, &[], 0)).unwrap().total, c("1.3"));
    }

    #[test]
    fn extremes_are_exact_or_out_of_range() {
        let max = Credits::from_micros(i64::MAX);
        let rates = ModelRates {
            runtime_infra: Credits::ZERO,
            input_per_mtok: Some(max),
            output_per_mtok: Some(max),
            per_generation: Some(max),
        };
        let none = BTreeMap::new();
        let u = usage(MAX_TOKENS, 0, &[], 0);
        assert_eq!(
            price_metered(&rates, &none, Credits::ZERO, Decimal::ZERO, &u),
            Err(PricingError::OutOfRange)
        );
        let one = usage(1, 0, &[], 0);
        // 1 token at i64::MAX micro-credits per million: ceil(9223372036854.775807) micro-credits.
        let p = price_metered(&rates, &none, Credits::ZERO, Decimal::ZERO, &one).unwrap();
        assert_eq!(p.input_tokens.micros(), 9_223_372_036_855);
        let negative = ModelRates { input_per_mtok: Some(c("-1")), ..rates };
        assert_eq!(
            price_metered(&negative, &none, Credits::ZERO, Decimal::ZERO, &one),
            Err(PricingError::OutOfRange)
        );
    }

    fn rate() -> impl Strategy<Value = Option<Credits>> {
        prop_oneof![
            Just(None),
            (0i64..=1_000_000_000_000).prop_map(|m| Some(Credits::from_micros(m))),
            (0i64..=1_000).prop_map(|m| Some(Credits::from_micros(m))),
        ]
    }

    prop_compose! {
        fn arb_usage()(
            input in 0..=MAX_TOKENS,
            output in 0..=MAX_TOKENS,
            tools in proptest::collection::btree_map("t[0-9]", 0..=MAX_CALLS_PER_TOOL, 0..4),
            generations in 0..=MAX_GENERATIONS,
        ) -> Usage {
            Usage { input_tokens: input, output_tokens: output, tool_calls: tools, generations }
        }
    }

    fn all_tools(price: i64) -> BTreeMap<String, Credits> {
        (0..10).map(|i| (format!("t{i}"), Credits::from_micros(price))).collect()
    }

    /// `p` is the ceiling of `tokens x rate / 10^6`: never below it, and
    /// less than one micro-credit above it.
    fn is_ceiling(p: Credits, tokens: u64, rate: Option<Credits>) -> bool {
        let exact = i128::from(tokens) * i128::from(rate.map_or(0, Credits::micros));
        let p = i128::from(p.micros());
        p * 1_000_000 >= exact && (p - 1) * 1_000_000 < exact
    }

    proptest! {
        #[test]
        fn parts_sum_to_the_total_and_no_token_part_favours_the_payer(
            infra in 0i64..=1_000_000_000_000,
            input_rate in rate(),
            output_rate in rate(),
            generation in rate(),
            tool_price in 0i64..=1_000_000_000,
            addon in 0i64..=1_000_000_000_000,
            share_pct in 0i64..=100,
            u in arb_usage(),
        ) {
            let rates = ModelRates {
                runtime_infra: Credits::from_micros(infra),
                input_per_mtok: input_rate,
                output_per_mtok: output_rate,
                per_generation: generation,
            };
            let share = Decimal::new(share_pct, 2);
            let result = price_metered(&rates, &all_tools(tool_price), Credits::from_micros(addon), share, &u);
            let refused = (u.input_tokens > 0 && input_rate.is_none())
                || (u.output_tokens > 0 && output_rate.is_none())
                || (u.generations > 0 && generation.is_none());
            prop_assert_eq!(result.is_err(), refused, "{:?}", result);
            if let Ok(p) = result {
                let sum: i128 = p.parts().iter().map(|x| i128::from(x.micros())).sum();
                prop_assert_eq!(sum, i128::from(p.total.micros()));
                prop_assert!(p.parts().iter().all(|x| !x.is_negative()));
                prop_assert_eq!(
                    i128::from(p.platform_share.micros()) + i128::from(p.creator_earnings.micros()),
                    i128::from(addon)
                );
                prop_assert!(is_ceiling(p.input_tokens, u.input_tokens, input_rate));
                prop_assert!(is_ceiling(p.output_tokens, u.output_tokens, output_rate));
                let calls: u64 = u.tool_calls.values().sum();
                prop_assert_eq!(i128::from(p.tools.micros()), i128::from(tool_price) * i128::from(calls));
                let g = i128::from(generation.map_or(0, Credits::micros)) * i128::from(u.generations);
                prop_assert_eq!(i128::from(p.generations.micros()), g);
                let free = p.as_free().unwrap();
                let free_sum: i128 = free.price.parts().iter().map(|x| i128::from(x.micros())).sum();
                prop_assert_eq!(free_sum, i128::from(free.price.total.micros()));
                prop_assert_eq!(
                    i128::from(free.price.total.micros())
                        + i128::from(free.subsidy.micros())
                        + i128::from(free.addon_forgone.micros()),
                    i128::from(p.total.micros())
                );
            }
        }
    }
}
