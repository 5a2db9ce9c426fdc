//! Conversions at the database boundary: u128 <-> NUMERIC(39,0), u64 <-> BIGINT.

use bigdecimal::BigDecimal;
use std::str::FromStr;

use crate::domain::Yocto;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{what} {value} does not fit in a signed 64-bit column")]
    TooLargeForBigint { what: &'static str, value: u64 },
    #[error("stored {what} {value} is not a whole yoctoNEAR amount within u128")]
    BadAmount { what: &'static str, value: String },
    #[error("stored {what} {value} is negative")]
    Negative { what: &'static str, value: i64 },
}

pub fn yocto_to_numeric(y: Yocto) -> BigDecimal {
    BigDecimal::from_str(&y.0.to_string()).expect("a u128 is a valid decimal")
}

pub fn numeric_to_yocto(what: &'static str, n: &BigDecimal) -> Result<Yocto, ConvertError> {
    let (digits, scale) = n.as_bigint_and_exponent();
    let text = if scale <= 0 {
        n.with_scale(0).to_string()
    } else {
        // NUMERIC(39,0) never has a fraction; anything else is corruption.
        return Err(ConvertError::BadAmount {
            what,
            value: format!("{digits}e-{scale}"),
        });
    };
    text.parse::<u128>()
        .map(Yocto)
        .map_err(|_| ConvertError::BadAmount { what, value: text })
}

pub fn u64_to_numeric(v: u64) -> BigDecimal {
    BigDecimal::from(v)
}

pub fn numeric_to_u64(what: &'static str, n: &BigDecimal) -> Result<u64, ConvertError> {
    let text = n.with_scale(0).to_string();
    text.parse::<u64>().map_err(|_| ConvertError::BadAmount {
        what,
        value: n.to_string(),
    })
}

pub fn height_to_i64(what: &'static str, v: u64) -> Result<i64, ConvertError> {
    i64::try_from(v).map_err(|_| ConvertError::TooLargeForBigint { what, value: v })
}

pub fn i64_to_height(what: &'static str, v: i64) -> Result<u64, ConvertError> {
    u64::try_from(v).map_err(|_| ConvertError::Negative { what, value: v })
}

/// Nanoseconds since the epoch as a timestamptz (microsecond precision).
pub fn ns_to_time(ns: u64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_nanos(ns.min(i64::MAX as u64) as i64)
}
