//! Property tests: valid account ids and keys round-trip; anything else is
//! an error, never a panic.

use keywatch::domain::public_key::PublicKeyProblem;
use keywatch::domain::{AccountId, KeyType, PublicKey};
use proptest::prelude::*;

/// The account-id grammar written independently of the parser: dot-separated
/// parts, each of `-`/`_`-separated non-empty runs of `a-z0-9`.
fn reference_valid(s: &str) -> bool {
    (2..=64).contains(&s.len())
        && s.split('.').all(|part| {
            part.split(['-', '_']).all(|run| {
                !run.is_empty()
                    && run
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            })
        })
}

fn valid_account_id() -> impl Strategy<Value = String> {
    let run = "[a-z0-9]{1,8}";
    let sep = prop_oneof![Just("."), Just("-"), Just("_")];
    (run, prop::collection::vec((sep, run), 0..8))
        .prop_map(|(first, rest)| {
            let mut s = first;
            for (sep, run) in rest {
                s.push_str(sep);
                s.push_str(&run);
            }
            s
        })
        .prop_filter("length 2..=64", |s| (2..=64).contains(&s.len()))
}

proptest! {
    #[test]
    fn valid_account_ids_round_trip(id in valid_account_id()) {
        let parsed = AccountId::parse(&id).unwrap();
        prop_assert_eq!(parsed.as_str(), id.as_str());
        prop_assert_eq!(parsed.to_string().parse::<AccountId>().unwrap(), parsed);
    }

    #[test]
    fn account_id_parser_agrees_with_the_grammar(s in "[a-z0-9._A-Z -]{0,70}") {
        let result = AccountId::parse(&s);
        prop_assert_eq!(result.is_ok(), reference_valid(&s), "{:?} -> {:?}", s, result);
        if let Err(e) = result {
            let prefix = format!("invalid account id {:?}: ", s);
            prop_assert!(e.to_string().starts_with(&prefix));
        }
    }

    #[test]
    fn account_id_parser_never_panics(s in any::<String>()) {
        let _ = AccountId::parse(&s);
    }

    #[test]
    fn valid_keys_round_trip(type_idx in 0usize..4, seed in any::<u64>(), upper in any::<bool>(), bare in any::<bool>()) {
        let key_type = KeyType::ALL[type_idx];
        let bytes: Vec<u8> = (0..key_type.data_len()).map(|i| (seed.wrapping_mul(i as u64 + 1) >> 3) as u8).collect();
        let data = bs58::encode(&bytes).into_string();
        let canonical = format!("{}:{data}", key_type.name());
        let input = match (bare && key_type == KeyType::Ed25519, upper) {
            (true, _) => data.clone(),
            (false, true) => format!("{}:{data}", key_type.name().to_uppercase()),
            (false, false) => canonical.clone(),
        };
        let key = PublicKey::parse(&input).unwrap();
        prop_assert_eq!(key.key_type(), key_type);
        prop_assert_eq!(key.as_str(), canonical.as_str());
        prop_assert_eq!(PublicKey::parse(key.as_str()).unwrap(), key.clone());
        prop_assert_eq!(PublicKey::parse_handle(&input).is_ok(), key_type != KeyType::MlDsa65);
    }

    #[test]
    fn keys_of_the_wrong_length_name_both_lengths(type_idx in 0usize..4, len in 0usize..2000) {
        let key_type = KeyType::ALL[type_idx];
        prop_assume!(len != key_type.data_len() && len > 0);
        let input = format!("{}:{}", key_type.name(), bs58::encode(vec![9u8; len]).into_string());
        let err = PublicKey::parse(&input).unwrap_err();
        prop_assert_eq!(err.reason, PublicKeyProblem::WrongLength { key_type: key_type.name(), got: len, expected: key_type.data_len() });
    }

    #[test]
    fn key_parser_never_panics(s in any::<String>()) {
        let _ = PublicKey::parse(&s);
    }

    #[test]
    fn key_parser_rejects_non_base58(prefix in prop_oneof![Just("ed25519:"), Just("")], body in "[0OIl+/=]{1,60}") {
        let err = PublicKey::parse(&format!("{prefix}{body}")).unwrap_err();
        prop_assert!(matches!(err.reason, PublicKeyProblem::Base58(_)), "{:?}", err);
    }
}
