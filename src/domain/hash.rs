//! Block, transaction and receipt hashes: base58 of 32 bytes.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct CryptoHash(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid hash {input:?}: {reason}")]
pub struct HashError {
    pub input: String,
    pub reason: String,
}

impl CryptoHash {
    pub fn parse(input: &str) -> Result<Self, HashError> {
        let fail = |reason: String| HashError {
            input: input.chars().take(80).collect(),
            reason,
        };
        // Checked before decoding: decoding costs time quadratic in the
        // length, and the text may come from a hostile node.
        let max = crate::domain::public_key::base58_max_len(32);
        if input.len() > max {
            return Err(fail(format!(
                "{} bytes long, longer than any 32-byte hash ({max})",
                input.len()
            )));
        }
        let bytes = bs58::decode(input)
            .into_vec()
            .map_err(|e| fail(format!("invalid base58: {e}")))?;
        if bytes.len() != 32 {
            return Err(fail(format!(
                "base58 decodes to {} bytes, expected 32",
                bytes.len()
            )));
        }
        // base58 is canonical: the valid text is the encoding of its bytes
        Ok(CryptoHash(input.to_owned()))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        CryptoHash(bs58::encode(bytes).into_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CryptoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for CryptoHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        CryptoHash::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_longer_than_any_encoding_is_refused_before_decoding() {
        let err = CryptoHash::parse(&"z".repeat(45)).unwrap_err();
        assert!(err.to_string().contains("45 bytes long"), "{err}");
        let max = bs58::encode([0xff; 32]).into_string();
        assert_eq!(CryptoHash::parse(&max).unwrap().as_str(), max);
    }

    #[test]
    fn all_ones_is_the_zero_hash_and_round_trips() {
        let zero = CryptoHash::parse("11111111111111111111111111111111").unwrap();
        assert_eq!(zero, CryptoHash::from_bytes([0; 32]));
        assert!(
            CryptoHash::parse("abc")
                .unwrap_err()
                .to_string()
                .contains("expected 32")
        );
        assert!(CryptoHash::parse("0OIl").is_err());
    }
}
