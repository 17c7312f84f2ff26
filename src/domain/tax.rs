//! Tax on invoices: the configured rate table by buyer country
//! (`TALLY_TAX_RATES`) and the split of a paid total into subtotal and tax.

use std::collections::BTreeMap;
use std::str::FromStr;

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};

/// Tax rates by ISO 3166-1 alpha-2 country, and whether pack prices
/// include them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaxTable {
    pub rates: BTreeMap<String, Decimal>,
    /// Prices include the tax (the buyer pays the pack price); otherwise the
    /// tax is added to the price when the order is made.
    pub inclusive: bool,
}

impl TaxTable {
    /// The rate for a buyer in `country` (none without a country or a rate).
    pub fn rate_for(&self, country: Option<&str>) -> Option<Decimal> {
        country.and_then(|c| self.rates.get(&c.to_ascii_uppercase())).copied()
    }
}

/// Reads `TALLY_TAX_RATES`: a JSON object of country code to rate as a
/// decimal string between 0 and 1 (`{"DE": "0.19", "FR": "0.20"}`).
pub fn parse_rates(text: &str) -> Result<BTreeMap<String, Decimal>, String> {
    let raw: BTreeMap<String, String> =
        serde_json::from_str(text).map_err(|e| format!("not a JSON object of country to rate: {e}"))?;
    let mut rates = BTreeMap::new();
    for (country, rate) in raw {
        if country.len() != 2 || celes::Country::from_alpha2(&country).is_err() {
            return Err(format!("'{country}' is not an ISO 3166-1 alpha-2 country code"));
        }
        let value = Decimal::from_str(rate.trim())
            .ok()
            .filter(|r| *r >= Decimal::ZERO && *r < Decimal::ONE)
            .ok_or_else(|| format!("{country}: '{rate}' is not a rate from 0 to below 1"))?;
        rates.insert(country.to_ascii_uppercase(), value);
    }
    Ok(rates)
}

fn round_cents(value: Decimal) -> Option<i64> {
    value.round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero).to_i64()
}

/// What the buyer pays for a pack of `price_cents` at `rate` (exclusive
/// tax is added, rounded to the cent; inclusive leaves the price).
pub fn gross_price(price_cents: i64, rate: Decimal, inclusive: bool) -> Option<i64> {
    if inclusive {
        return Some(price_cents);
    }
    price_cents.checked_add(round_cents(Decimal::from(price_cents) * rate)?)
}

/// Splits a paid total at `rate` into (subtotal, tax): the subtotal is the
/// total divided by 1 + rate, rounded to the cent; the tax is the rest, so
/// the two always add up to what was paid. For an exclusive price this
/// gives back the price and the tax [`gross_price`] added.
pub fn split_total(total_cents: i64, rate: Decimal) -> Option<(i64, i64)> {
    let subtotal = round_cents(Decimal::from(total_cents) / (Decimal::ONE + rate))?;
    Some((subtotal, total_cents.checked_sub(subtotal)?))
}

/// The tax part of `part` cents of a total of `whole` cents carrying `tax`
/// cents of tax, rounded down; the parts of a whole add up to `tax`
/// when each is taken as the difference of running totals.
pub fn tax_share(tax: i64, part: i64, whole: i64) -> i64 {
    if whole <= 0 {
        return 0;
    }
    ((tax as i128 * part.clamp(0, whole) as i128) / whole as i128) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn exclusive_price_adds_the_tax_and_splits_back_exactly() {
        assert_eq!(gross_price(1500, d("0.19"), false), Some(1785));
        assert_eq!(split_total(1785, d("0.19")), Some((1500, 285)));
        for price in [1, 99, 499, 500, 1234, 99_999] {
            for rate in ["0.05", "0.07", "0.19", "0.2", "0.255"] {
                let gross = gross_price(price, d(rate), false).unwrap();
                assert_eq!(split_total(gross, d(rate)).unwrap().0, price, "{price} at {rate}");
            }
        }
    }

    #[test]
    fn inclusive_price_is_split() {
        assert_eq!(gross_price(1500, d("0.19"), true), Some(1500));
        assert_eq!(split_total(1500, d("0.19")), Some((1261, 239)));
        assert_eq!(split_total(500, Decimal::ZERO), Some((500, 0)));
    }

    #[test]
    fn tax_shares_of_partial_refunds_add_up() {
        let parts = [700, 300, 785];
        let (mut done, mut taken) = (0, 0);
        for p in parts {
            let share = tax_share(285, done + p, 1785) - tax_share(285, done, 1785);
            taken += share;
            done += p;
        }
        assert_eq!(taken, 285);
    }

    #[test]
    fn rates_are_checked() {
        assert_eq!(parse_rates(r#"{"DE": "0.19"}"#).unwrap().get("DE"), Some(&d("0.19")));
        assert!(parse_rates(r#"{"XX": "0.19"}"#).is_err());
        assert!(parse_rates(r#"{"DE": "19"}"#).is_err());
        assert!(parse_rates(r#"{"DE": "-0.1"}"#).is_err());
        assert!(parse_rates("[]").is_err());
    }
}
