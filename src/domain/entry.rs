//! A balanced journal entry: the rule every movement of value obeys.

use super::kinds::AccountKind;
use super::money::Credits;

/// One posting of an entry before it is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leg {
    pub account_id: i64,
    pub kind: AccountKind,
    pub amount: Credits,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("an entry needs at least two postings")]
    TooFewPostings,
    #[error("postings sum to {0} micro-credits, not zero")]
    Unbalanced(i128),
    #[error("account {0} appears twice in one entry")]
    DuplicateAccount(i64),
}

/// Checks that the legs form a valid entry: two or more postings, one per
/// account, summing to exactly zero. Zero legs are allowed: a free message
/// records a zero posting on the wallet so that it shows in its history.
pub fn check_balanced(legs: &[Leg]) -> Result<(), EntryError> {
    if legs.len() < 2 {
        return Err(EntryError::TooFewPostings);
    }
    let mut seen: Vec<i64> = legs.iter().map(|l| l.account_id).collect();
    seen.sort_unstable();
    if let Some(w) = seen.windows(2).find(|w| w[0] == w[1]) {
        return Err(EntryError::DuplicateAccount(w[0]));
    }
    // i128 cannot overflow for any number of i64 legs we would ever write.
    let sum: i128 = legs.iter().map(|l| l.amount.micros() as i128).sum();
    if sum != 0 {
        return Err(EntryError::Unbalanced(sum));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leg(id: i64, micros: i64) -> Leg {
        Leg { account_id: id, kind: AccountKind::Wallet, amount: Credits::from_micros(micros) }
    }

    #[test]
    fn balanced_entries_pass() {
        assert_eq!(check_balanced(&[leg(1, -5), leg(2, 3), leg(3, 2)]), Ok(()));
        assert_eq!(check_balanced(&[leg(1, 0), leg(2, -3), leg(3, 3)]), Ok(()));
    }

    #[test]
    fn unbalanced_entries_are_refused() {
        assert_eq!(check_balanced(&[leg(1, -5), leg(2, 4)]), Err(EntryError::Unbalanced(-1)));
        assert_eq!(check_balanced(&[leg(1, 5)]), Err(EntryError::TooFewPostings));
        assert_eq!(check_balanced(&[leg(1, 0), leg(2, 0)]), Ok(()));
        assert_eq!(check_balanced(&[leg(1, 5), leg(1, -5)]), Err(EntryError::DuplicateAccount(1)));
        assert_eq!(
            check_balanced(&[leg(1, i64::MAX), leg(2, i64::MAX), leg(3, i64::MIN)]),
            Err(EntryError::Unbalanced(i64::MAX as i128 - 1))
        );
    }
}
