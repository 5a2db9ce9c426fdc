//! Public keys and key handles as NEAR prints them: `<type>:<base58>`.
//!
//! On chain (in `changes` and key lists) an ML-DSA-65 key only ever appears as
//! its 32-byte `ml-dsa-65-hash:` handle; the 1952-byte key itself is never
//! stored in state. A key without a type prefix is ed25519, and type names
//! are case-insensitive on input and lowercase on output, as in near-crypto.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyType {
    Ed25519,
    Secp256k1,
    MlDsa65,
    MlDsa65Hash,
}

impl KeyType {
    pub const ALL: [KeyType; 4] = [
        KeyType::Ed25519,
        KeyType::Secp256k1,
        KeyType::MlDsa65,
        KeyType::MlDsa65Hash,
    ];

    pub fn name(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "ed25519",
            KeyType::Secp256k1 => "secp256k1",
            KeyType::MlDsa65 => "ml-dsa-65",
            KeyType::MlDsa65Hash => "ml-dsa-65-hash",
        }
    }

    /// Length of the decoded key data in bytes.
    pub fn data_len(self) -> usize {
        match self {
            KeyType::Ed25519 => 32,
            KeyType::Secp256k1 => 64,
            KeyType::MlDsa65 => 1952,
            KeyType::MlDsa65Hash => 32,
        }
    }

    fn from_name(name: &str) -> Option<KeyType> {
        KeyType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }
}

/// A validated public key (or key handle), kept in its canonical text form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(into = "String")]
pub struct PublicKey {
    key_type: KeyType,
    /// Canonical `<type>:<base58>` form.
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid public key {input:?}: {reason}")]
pub struct PublicKeyError {
    pub input: String,
    pub reason: PublicKeyProblem,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublicKeyProblem {
    #[error("unknown key type {0:?} (expected ed25519, secp256k1, ml-dsa-65 or ml-dsa-65-hash)")]
    UnknownType(String),
    #[error("the key data is empty")]
    Empty,
    #[error("invalid base58: {0}")]
    Base58(String),
    #[error("the key data is {got} bytes long, longer than any {key_type} key ({max})")]
    TooLong {
        key_type: &'static str,
        got: usize,
        max: usize,
    },
    #[error("base58 decodes to {got} bytes, expected {expected} for {key_type}")]
    WrongLength {
        key_type: &'static str,
        got: usize,
        expected: usize,
    },
    #[error(
        "a full ml-dsa-65 key never appears on chain; use its ml-dsa-65-hash: handle, as `keywatch keys` prints it"
    )]
    FullMlDsaKeyNotAHandle,
}

/// The longest base58 text `bytes` bytes encode to (log 256 / log 58 is
/// 1.3657 characters per byte, rounded up).
pub fn base58_max_len(bytes: usize) -> usize {
    (bytes * 1366).div_ceil(1000)
}

impl PublicKey {
    /// Parses any key form, including a full `ml-dsa-65:` key.
    pub fn parse(input: &str) -> Result<Self, PublicKeyError> {
        let fail = |reason| PublicKeyError {
            input: truncate_for_message(input),
            reason,
        };
        let (key_type, data) = match input.split_once(':') {
            Some((name, data)) => (
                KeyType::from_name(name)
                    .ok_or_else(|| fail(PublicKeyProblem::UnknownType(name.to_owned())))?,
                data,
            ),
            None => (KeyType::Ed25519, input),
        };
        if data.is_empty() {
            return Err(fail(PublicKeyProblem::Empty));
        }
        // Checked before decoding: decoding costs time quadratic in the
        // length, and the text may come from a hostile node.
        let max = base58_max_len(key_type.data_len());
        if data.len() > max {
            return Err(fail(PublicKeyProblem::TooLong {
                key_type: key_type.name(),
                got: data.len(),
                max,
            }));
        }
        let bytes = bs58::decode(data)
            .into_vec()
            .map_err(|e| fail(PublicKeyProblem::Base58(e.to_string())))?;
        if bytes.len() != key_type.data_len() {
            return Err(fail(PublicKeyProblem::WrongLength {
                key_type: key_type.name(),
                got: bytes.len(),
                expected: key_type.data_len(),
            }));
        }
        Ok(PublicKey {
            key_type,
            // base58 is canonical: the valid text is the encoding of its bytes
            text: format!("{}:{data}", key_type.name()),
        })
    }

    /// Parses a key in the form it takes on chain: a full `ml-dsa-65:` key is
    /// refused, with the explanation, because state only holds its handle.
    pub fn parse_handle(input: &str) -> Result<Self, PublicKeyError> {
        let key = PublicKey::parse(input)?;
        if key.key_type == KeyType::MlDsa65 {
            return Err(PublicKeyError {
                input: truncate_for_message(input),
                reason: PublicKeyProblem::FullMlDsaKeyNotAHandle,
            });
        }
        Ok(key)
    }

    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// ML-DSA keys are ~2.7 KB of text: keep error messages readable.
fn truncate_for_message(input: &str) -> String {
    const MAX: usize = 120;
    if input.len() <= MAX {
        return input.to_owned();
    }
    let mut end = MAX;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &input[..end], input.len())
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl From<PublicKey> for String {
    fn from(k: PublicKey) -> String {
        k.text
    }
}

impl std::str::FromStr for PublicKey {
    type Err = PublicKeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PublicKey::parse(s)
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        PublicKey::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "ed25519:EddTahJwZpJjYPPmat7DBm1m2vdrFBzVv7e3T4hzkENd";

    #[test]
    fn unprefixed_and_uppercase_type_normalise_to_canonical_ed25519() {
        let bare = PublicKey::parse("EddTahJwZpJjYPPmat7DBm1m2vdrFBzVv7e3T4hzkENd").unwrap();
        let upper =
            PublicKey::parse("ED25519:EddTahJwZpJjYPPmat7DBm1m2vdrFBzVv7e3T4hzkENd").unwrap();
        assert_eq!(bare.as_str(), ED);
        assert_eq!(upper, bare);
    }

    #[test]
    fn the_text_kept_is_the_canonical_encoding_of_the_bytes() {
        // leading zero bytes, all-ones, and mixed values
        for bytes in [[0u8; 32], [0xff; 32], {
            let mut b = [0u8; 32];
            b[5..]
                .iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = (i as u8).wrapping_mul(37));
            b
        }] {
            let text = bs58::encode(bytes).into_string();
            assert!(text.len() <= base58_max_len(32));
            let key = PublicKey::parse(&text).unwrap();
            assert_eq!(key.to_string(), format!("ed25519:{text}"));
            assert_eq!(bs58::decode(&text).into_vec().unwrap(), bytes);
        }
        assert_eq!(base58_max_len(32), 44);
        assert_eq!(bs58::encode([0xff; 32]).into_string().len(), 44);
    }

    #[test]
    fn a_key_longer_than_any_encoding_is_refused_before_decoding() {
        let huge = format!("ed25519:{}", "z".repeat(4_000_000));
        let err = PublicKey::parse(&huge).unwrap_err();
        assert_eq!(
            err.reason,
            PublicKeyProblem::TooLong {
                key_type: "ed25519",
                got: 4_000_000,
                max: 44
            }
        );
        assert!(
            err.to_string().len() < 300,
            "the input is cut in the message"
        );
    }

    #[test]
    fn reports_wrong_length_with_counts() {
        let err = PublicKey::parse("ed25519:abc").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid public key \"ed25519:abc\": base58 decodes to 3 bytes, expected 32 for ed25519"
        );
        let secp_as_32 = format!("secp256k1:{}", &ED[8..]);
        assert!(
            PublicKey::parse(&secp_as_32)
                .unwrap_err()
                .to_string()
                .contains("decodes to 32 bytes, expected 64 for secp256k1")
        );
    }

    #[test]
    fn rejects_bad_base58_and_unknown_types() {
        assert!(matches!(
            PublicKey::parse("ed25519:0OIl").unwrap_err().reason,
            PublicKeyProblem::Base58(_)
        ));
        assert!(matches!(
            PublicKey::parse("rsa:abc").unwrap_err().reason,
            PublicKeyProblem::UnknownType(t) if t == "rsa"
        ));
        assert_eq!(
            PublicKey::parse("ed25519:").unwrap_err().reason,
            PublicKeyProblem::Empty
        );
    }

    #[test]
    fn a_full_ml_dsa_key_is_refused_where_a_handle_is_needed() {
        let full = format!("ml-dsa-65:{}", bs58::encode(vec![7u8; 1952]).into_string());
        assert_eq!(
            PublicKey::parse(&full).unwrap().key_type(),
            KeyType::MlDsa65
        );
        let err = PublicKey::parse_handle(&full).unwrap_err();
        assert_eq!(err.reason, PublicKeyProblem::FullMlDsaKeyNotAHandle);
        assert!(err.input.len() < 200, "long keys are shortened in messages");
        let handle = "ml-dsa-65-hash:4F9TwuSqWwvoyu7JVZDsupPhC7oYbYNsisBV2yQvyXFn";
        assert_eq!(PublicKey::parse_handle(handle).unwrap().as_str(), handle);
    }
}
