//! NEAR account ids, validated by the rules of near-account-id 3.x.
//!
//! An id is 2..=64 characters of `a-z 0-9 - _ .` with no separator at
//! either end and no two separators side by side. Implicit accounts (64 hex,
//! `0x`/`0s` + 40 hex, `0u` + 52 Crockford base32) satisfy those rules too;
//! [`AccountId::kind`] tells them apart from named accounts.

use std::fmt;

/// A validated NEAR account id. Construct with [`AccountId::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct AccountId(String);

/// What kind of account an id names, by its form alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountKind {
    Named,
    /// 64 lowercase hex: the ed25519 public key in hex.
    NearImplicit,
    /// `0x` + 40 lowercase hex.
    EthImplicit,
    /// `0s` + 40 lowercase hex (NEP-616).
    NearDeterministic,
    /// `0u` + 52 Crockford base32, last character `0` or `g` (protocol 88).
    Universal,
}

/// Why a string is not an account id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid account id {input:?}: {reason}")]
pub struct AccountIdError {
    pub input: String,
    pub reason: AccountIdRule,
}

/// The rule an invalid account id breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountIdRule {
    #[error("{len} characters, at least 2 are required")]
    TooShort { len: usize },
    #[error("{len} characters, at most 64 are allowed")]
    TooLong { len: usize },
    #[error("character {ch:?} at position {pos} is not allowed (only a-z, 0-9, '-', '_' and '.')")]
    InvalidChar { ch: char, pos: usize },
    #[error("it starts with the separator {ch:?}")]
    SeparatorAtStart { ch: char },
    #[error("it ends with the separator {ch:?}")]
    SeparatorAtEnd { ch: char },
    #[error("separators {first:?} and {second:?} are adjacent at position {pos}")]
    AdjacentSeparators {
        first: char,
        second: char,
        pos: usize,
    },
}

const MIN_LEN: usize = 2;
const MAX_LEN: usize = 64;

fn is_separator(c: char) -> bool {
    matches!(c, '-' | '_' | '.')
}

impl AccountId {
    pub fn parse(input: &str) -> Result<Self, AccountIdError> {
        let fail = |reason| AccountIdError {
            input: input.to_owned(),
            reason,
        };
        let len = input.chars().count();
        if len < MIN_LEN {
            return Err(fail(AccountIdRule::TooShort { len }));
        }
        if len > MAX_LEN {
            return Err(fail(AccountIdRule::TooLong { len }));
        }
        let mut prev: Option<char> = None;
        for (pos, ch) in input.chars().enumerate() {
            let allowed = ch.is_ascii_lowercase() || ch.is_ascii_digit() || is_separator(ch);
            if !allowed {
                return Err(fail(AccountIdRule::InvalidChar { ch, pos }));
            }
            if is_separator(ch) {
                if pos == 0 {
                    return Err(fail(AccountIdRule::SeparatorAtStart { ch }));
                }
                if let Some(p) = prev.filter(|p| is_separator(*p)) {
                    return Err(fail(AccountIdRule::AdjacentSeparators {
                        first: p,
                        second: ch,
                        pos,
                    }));
                }
            }
            prev = Some(ch);
        }
        if let Some(last) = prev.filter(|c| is_separator(*c)) {
            return Err(fail(AccountIdRule::SeparatorAtEnd { ch: last }));
        }
        Ok(AccountId(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn kind(&self) -> AccountKind {
        let s = self.0.as_str();
        let hex = |t: &str| {
            t.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let crockford = |t: &str| {
            t.bytes()
                .all(|b| b.is_ascii_digit() || (b.is_ascii_lowercase() && !b"ilou".contains(&b)))
        };
        if s.len() == 64 && hex(s) {
            AccountKind::NearImplicit
        } else if s.len() == 42 && s.starts_with("0x") && hex(&s[2..]) {
            AccountKind::EthImplicit
        } else if s.len() == 42 && s.starts_with("0s") && hex(&s[2..]) {
            AccountKind::NearDeterministic
        } else if s.len() == 54
            && s.starts_with("0u")
            && crockford(&s[2..])
            && matches!(s.as_bytes()[53], b'0' | b'g')
        {
            AccountKind::Universal
        } else {
            AccountKind::Named
        }
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for AccountId {
    type Err = AccountIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AccountId::parse(s)
    }
}

impl<'de> serde::Deserialize<'de> for AccountId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        AccountId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_named_and_implicit_forms() {
        for (id, kind) in [
            ("near", AccountKind::Named),
            ("a1", AccountKind::Named),
            ("treasury.sputnik-dao.near", AccountKind::Named),
            ("app_1.alice.near", AccountKind::Named),
            (
                "98793cd91a3f870fb126f66285808c7e094afcfc4eda8a970f6648cdf0dbd6de",
                AccountKind::NearImplicit,
            ),
            (
                "0xb794f5ea0ba39494ce839613fffba74279579268",
                AccountKind::EthImplicit,
            ),
            (
                "0s2f0b1c1e5b2a7d9c0e4f6a8b3c5d7e9f1a2b4c6d",
                AccountKind::NearDeterministic,
            ),
            (
                "0u0000000000000000000000000000000000000000000000000000",
                AccountKind::Universal,
            ),
        ] {
            let parsed = AccountId::parse(id).unwrap();
            assert_eq!(parsed.as_str(), id);
            assert_eq!(parsed.kind(), kind, "{id}");
        }
    }

    #[test]
    fn names_the_rule_an_invalid_id_breaks() {
        let cases = [
            ("a", "1 characters, at least 2 are required"),
            (
                "bad..id",
                "separators '.' and '.' are adjacent at position 4",
            ),
            ("Alice.near", "character 'A' at position 0 is not allowed"),
            (".alice", "starts with the separator '.'"),
            ("alice-", "ends with the separator '-'"),
            ("a b", "character ' ' at position 1"),
        ];
        for (input, expected) in cases {
            let msg = AccountId::parse(input).unwrap_err().to_string();
            assert!(
                msg.starts_with(&format!("invalid account id {input:?}: ")),
                "{msg}"
            );
            assert!(msg.contains(expected), "{input}: {msg}");
        }
        let long = "a".repeat(65);
        assert!(matches!(
            AccountId::parse(&long).unwrap_err().reason,
            AccountIdRule::TooLong { len: 65 }
        ));
    }

    #[test]
    fn malformed_implicit_lookalikes_are_named_accounts() {
        // 0x with 39 hex digits is a valid id, but not an eth-implicit one.
        let id = AccountId::parse("0xb794f5ea0ba39494ce839613fffba7427957926").unwrap();
        assert_eq!(id.kind(), AccountKind::Named);
        // universal ids must end in 0 or g
        let id =
            AccountId::parse("0u0000000000000000000000000000000000000000000000000001").unwrap();
        assert_eq!(id.kind(), AccountKind::Named);
    }
}
