//! Property tests: valid account ids and keys round-trip; anything else is
//! an error, never a panic. Hostile RPC input (every real sample mutated at
//! random places with wrong types, nulls, 10^40 amounts, negative heights,
//! deep nesting, huge strings) into every response parser: a classified
//! error or a value, never a panic.

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
        let data = bs58::encode(vec![9u8; len]).into_string();
        let input = format!("{}:{data}", key_type.name());
        let err = PublicKey::parse(&input).unwrap_err();
        let max = keywatch::domain::public_key::base58_max_len(key_type.data_len());
        if data.len() > max {
            // refused before decoding: longer than any key of its type
            prop_assert_eq!(err.reason, PublicKeyProblem::TooLong { key_type: key_type.name(), got: data.len(), max });
        } else {
            prop_assert_eq!(err.reason, PublicKeyProblem::WrongLength { key_type: key_type.name(), got: len, expected: key_type.data_len() });
        }
    }

    #[test]
    fn key_parser_never_panics(s in any::<String>()) {
        let _ = PublicKey::parse(&s);
    }

    #[test]
    fn key_parser_rejects_non_base58(prefix in prop_oneof![Just("ed25519:"), Just("")], body in "[0OIl+/=]{1,44}") {
        let err = PublicKey::parse(&format!("{prefix}{body}")).unwrap_err();
        prop_assert!(matches!(err.reason, PublicKeyProblem::Base58(_)), "{:?}", err);
    }
}

mod hostile_rpc {
    use super::*;
    use keywatch::rpc::RpcError;
    use keywatch::rpc::transport::{Reply, interpret};
    use keywatch::rpc::views::{
        AccessKeyLookup, AccessKeyView, AccountAt, BlockEffectsView, BlockView, ChangesView,
        KeyListPage, StatusView,
    };
    use serde_json::{Value, json};

    /// Every sample body that holds a JSON-RPC envelope or a bare result.
    fn samples() -> Vec<Value> {
        let mut files = Vec::new();
        let mut dirs = vec![crate::samples::samples_dir()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "json") {
                    files.push(path);
                }
            }
        }
        files.sort();
        files
            .iter()
            .map(|f| {
                let doc: Value = serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap();
                let body = doc.get("response").cloned().unwrap_or(doc);
                if body.get("result").is_some() || body.get("error").is_some() {
                    body
                } else {
                    json!({"jsonrpc": "2.0", "id": "dontcare", "result": body})
                }
            })
            .collect()
    }

    static SAMPLES: std::sync::LazyLock<Vec<Value>> = std::sync::LazyLock::new(samples);

    /// Values an attacker would put anywhere.
    fn hostile_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            Just(json!(-1)),
            Just(json!(u64::MAX)),
            Just(json!(1e300)),
            Just(json!("1".repeat(41))), // 10^40: above u128
            Just(json!("340282366920938463463374607431768211456")), // u128::MAX + 1
            Just(json!("-5")),
            Just(json!("ed25519:".to_owned() + &"z".repeat(10_000))),
            "[a-zA-Z0-9:._ -]{0,40}".prop_map(Value::String),
            Just(json!([])),
            Just(json!({})),
            Just(json!({"FunctionCall": {"allowance": "1".repeat(41)}})),
        ]
    }

    /// Replaces the value at the `pick`-th node (in a walk of the tree) by
    /// `with`.
    fn mutate(v: &mut Value, pick: &mut usize, with: &Value) -> bool {
        if *pick == 0 {
            *v = with.clone();
            return true;
        }
        *pick -= 1;
        match v {
            Value::Array(items) => items.iter_mut().any(|i| mutate(i, pick, with)),
            Value::Object(map) => map.values_mut().any(|i| mutate(i, pick, with)),
            _ => false,
        }
    }

    /// Every typed parser of the client's response path on `body`: each
    /// returns a value or a classified error.
    fn parse_everything(status: u16, body: &[u8]) {
        let reply = Reply {
            url: "http://127.0.0.1:1",
            method: "hostile",
            status,
            retry_after: None,
        };
        fn check<T: serde::de::DeserializeOwned>(r: &Reply<'_>, body: &[u8]) {
            match interpret::<T>(r, None, body) {
                Ok(_) => {}
                Err(RpcError::Malformed { .. } | RpcError::Node(_) | RpcError::Http { .. }) => {}
                Err(other) => panic!("unexpected classification: {other:?}"),
            }
        }
        check::<BlockView>(&reply, body);
        check::<BlockEffectsView>(&reply, body);
        check::<ChangesView>(&reply, body);
        check::<StatusView>(&reply, body);
        check::<AccessKeyLookup>(&reply, body);
        check::<AccessKeyView>(&reply, body);
        check::<KeyListPage>(&reply, body);
        check::<AccountAt>(&reply, body);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn mutated_real_responses_parse_or_fail_cleanly(
            sample in 0usize..64,
            mutations in prop::collection::vec((any::<usize>(), hostile_value()), 1..4),
            status in prop_oneof![Just(200u16), Just(200), Just(200), Just(500), Just(429)],
        ) {
            let all = &*SAMPLES;
            let mut body = all[sample % all.len()].clone();
            for (at, with) in &mutations {
                let mut pick = at % 200;
                mutate(&mut body, &mut pick, with);
            }
            parse_everything(status, &serde_json::to_vec(&body).unwrap());
        }

        #[test]
        fn arbitrary_bytes_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            parse_everything(200, &bytes);
        }
    }

    #[test]
    fn deep_nesting_and_huge_strings_fail_cleanly() {
        // 100,000 levels: serde_json's recursion limit refuses it
        let deep = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":\"x\",\"result\":{}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        parse_everything(200, deep.as_bytes());
        // a 30 MB string where a hash belongs
        let mut block = SAMPLES
            .iter()
            .find(|b| b["result"]["header"].is_object())
            .expect("a block sample")
            .clone();
        block["result"]["header"]["hash"] = json!("z".repeat(30 * 1024 * 1024));
        let bytes = serde_json::to_vec(&block).unwrap();
        let reply = Reply {
            url: "u",
            method: "block",
            status: 200,
            retry_after: None,
        };
        let err = interpret::<BlockView>(&reply, None, &bytes).unwrap_err();
        assert!(matches!(err, RpcError::Malformed { .. }), "{err:?}");
        assert!(err.to_string().len() < 2_000, "the message is bounded");
        parse_everything(200, &bytes);
    }
}
