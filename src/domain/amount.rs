//! yoctoNEAR amounts: u128 end to end, never floats.
//!
//! 1 NEAR = 10^24 yocto. Balances, locked stake, allowances and gas-key
//! balances all travel as decimal strings of up to 39 digits.

use std::fmt;

pub const YOCTO_PER_NEAR: u128 = 1_000_000_000_000_000_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Yocto(pub u128);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid yoctoNEAR amount {input:?}: {reason}")]
pub struct AmountError {
    pub input: String,
    pub reason: &'static str,
}

impl Yocto {
    pub const ZERO: Yocto = Yocto(0);

    /// Parses a plain decimal string of yocto, as the RPC sends it.
    pub fn parse(input: &str) -> Result<Self, AmountError> {
        let fail = |reason| AmountError {
            input: input.chars().take(60).collect(),
            reason,
        };
        if input.is_empty() {
            return Err(fail("empty"));
        }
        if !input.bytes().all(|b| b.is_ascii_digit()) {
            return Err(fail("only decimal digits are allowed"));
        }
        input
            .parse::<u128>()
            .map(Yocto)
            .map_err(|_| fail("larger than the u128 maximum"))
    }

    /// Parses a human amount in NEAR (`"1.5"`, `"0.000001"`, `"10"`), exactly.
    pub fn parse_near(input: &str) -> Result<Self, AmountError> {
        let fail = |reason| AmountError {
            input: input.chars().take(60).collect(),
            reason,
        };
        let (whole, frac) = input.split_once('.').unwrap_or((input, ""));
        if whole.is_empty() && frac.is_empty() {
            return Err(fail("empty"));
        }
        if !whole
            .bytes()
            .chain(frac.bytes())
            .all(|b| b.is_ascii_digit())
        {
            return Err(fail("expected a decimal number of NEAR such as 1.5"));
        }
        if frac.len() > 24 {
            return Err(fail(
                "more than 24 decimal places (1 yoctoNEAR is 10^-24 NEAR)",
            ));
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| fail("too large"))?
        };
        let frac_yocto: u128 = if frac.is_empty() {
            0
        } else {
            frac.parse::<u128>().map_err(|_| fail("too large"))?
                * 10u128.pow(24 - frac.len() as u32)
        };
        whole
            .checked_mul(YOCTO_PER_NEAR)
            .and_then(|w| w.checked_add(frac_yocto))
            .map(Yocto)
            .ok_or_else(|| fail("larger than the u128 maximum"))
    }

    /// Exact NEAR rendering: `1.5 NEAR`, `0.000000000000000000000001 NEAR`.
    pub fn to_near_string(self) -> String {
        let whole = self.0 / YOCTO_PER_NEAR;
        let frac = self.0 % YOCTO_PER_NEAR;
        if frac == 0 {
            return format!("{whole} NEAR");
        }
        let digits = format!("{frac:024}");
        format!("{whole}.{} NEAR", digits.trim_end_matches('0'))
    }
}

impl fmt::Display for Yocto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl serde::Serialize for Yocto {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Yocto {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Yocto::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_exactly_without_floats() {
        assert_eq!(Yocto(0).to_near_string(), "0 NEAR");
        assert_eq!(Yocto(1).to_near_string(), "0.000000000000000000000001 NEAR");
        assert_eq!(
            Yocto(1_500_000_000_000_000_000_000_000).to_near_string(),
            "1.5 NEAR"
        );
        assert_eq!(
            Yocto(u128::MAX).to_near_string(),
            "340282366920938.463463374607431768211455 NEAR"
        );
    }

    #[test]
    fn parses_near_amounts_exactly() {
        assert_eq!(
            Yocto::parse_near("1.5").unwrap(),
            Yocto(15 * YOCTO_PER_NEAR / 10)
        );
        assert_eq!(
            Yocto::parse_near("0.000000000000000000000001").unwrap(),
            Yocto(1)
        );
        assert_eq!(
            Yocto::parse_near("100").unwrap(),
            Yocto(100 * YOCTO_PER_NEAR)
        );
        assert!(Yocto::parse_near("1e3").is_err());
        assert!(Yocto::parse_near("0.0000000000000000000000001").is_err());
        assert!(Yocto::parse_near("340282366920939").is_err());
    }

    #[test]
    fn parse_rejects_signs_spaces_and_overflow() {
        assert_eq!(
            Yocto::parse(&u128::MAX.to_string()).unwrap(),
            Yocto(u128::MAX)
        );
        for bad in [
            "",
            "-1",
            "+1",
            " 1",
            "1.0",
            "340282366920938463463374607431768211456",
        ] {
            assert!(Yocto::parse(bad).is_err(), "{bad:?}");
        }
    }
}
