//! The chain simulator: same shapes as a real node, both profiles, the state
//! changes a real node writes, reproducible faults.

use std::collections::BTreeSet;

use keywatch::domain::{AccountId, ChangeValue, Permission, PublicKey, YOCTO_PER_NEAR, Yocto};
use keywatch::rpc::{BlockRef, ChangesKind, RpcClient, RpcSettings};
use keywatch::sim::{Clock, FaultKind, FaultPlan, FaultRule, Scenario, SimOptions, Simulator};
use serde_json::{Value, json};

use crate::support::sample_result;

const ALICE_FULL: &str = "ed25519:2czEoxvpiTZ8isg5dwfw1hbUyxUVALZSuhBAhd6BVAMx";
const ALICE_FC: &str = "ed25519:GbRg7soVYnFmTA4SjutrG1N3kqTQ93knT3gwAttEDM1Z";
const NEW_KEY: &str = "ed25519:8FtSP48gqecdyqsH2Xinz5tvneUKJv1i9k77AVNReiB6";
const GAS_KEY: &str = "ed25519:8GGzH1ySaUbbLGnLwhn1myU3xbQKiYcjJJ9LHTVrMBGK";
const ML_DSA: &str = "ml-dsa-65-hash:GRCGKPX6ohVKP1CfKZVFikGUTW7uhtBujSB5j48tWtVE";
const BOB_FULL: &str = "ed25519:5kbYxsayDer3GMeoXCkYu4y3Pw8zWyJg7AmT1Y9namR7";

/// A small chain with every change kind; expectations below are computed by hand.
fn story(profile: &str) -> String {
    let gas = if profile == "current" {
        format!(
            r#"
[[actions]]
at = 106
do = "add_key"
account = "alice.near"
key = "{GAS_KEY}"
permission = {{ gas_key_full_access = {{ balance = "0.5", num_nonces = 2 }} }}

[[actions]]
at = 108
do = "call"
account = "alice.near"
signer = "{GAS_KEY}"
nonce_slot = 1
receiver = "app.near"
fee = "0.1"

[[actions]]
at = 108
do = "add_key"
account = "alice.near"
key = "{ML_DSA}"
permission = "full_access"
"#
        )
    } else {
        String::new()
    };
    format!(
        r#"
[chain]
profile = "{profile}"
start_height = 100
skip = [103, 107]
gc_keep = 8
seed = 3

[[accounts]]
id = "alice.near"
amount = "10"
keys = [
  {{ key = "{ALICE_FULL}", permission = "full_access" }},
  {{ key = "{ALICE_FC}", permission = {{ function_call = {{ allowance = "1", receiver = "app.near", methods = ["ping"] }} }} }},
]

[[accounts]]
id = "bob.near"
amount = "5"
keys = [{{ key = "{BOB_FULL}", permission = "full_access" }}]

[[actions]]
at = 101
do = "add_key"
account = "alice.near"
key = "{NEW_KEY}"
permission = "full_access"

[[actions]]
at = 102
do = "call"
account = "alice.near"
signer = "{ALICE_FC}"
receiver = "app.near"
fee = "0.3"
refund = "0.1"

[[actions]]
at = 104
do = "call"
account = "alice.near"
signer = "{ALICE_FC}"
receiver = "app.near"
fee = "0.3"
refund = "0.1"
refund_after = 1

[[actions]]
at = 104
do = "deploy"
account = "alice.near"
code_hash = "6LrkobEkjLxc5pcyAYrYe8Yf4qin3rNT14JDQmp3rm54"

[[actions]]
at = 105
do = "delete_account"
account = "bob.near"
fee = "1"
beneficiary = "alice.near"
{gas}"#
    )
}

fn scenario(profile: &str) -> Scenario {
    Scenario::from_toml(&story(profile), "test story").unwrap()
}

async fn sim(profile: &str) -> Simulator {
    Simulator::start(scenario(profile), SimOptions::default())
        .await
        .unwrap()
}

fn near(n: f64) -> Yocto {
    Yocto::parse_near(&format!("{n}")).unwrap()
}

fn acc(s: &str) -> AccountId {
    AccountId::parse(s).unwrap()
}

fn key(s: &str) -> PublicKey {
    PublicKey::parse(s).unwrap()
}

/// Sends a raw JSON-RPC request; returns the HTTP status and body.
async fn raw(sim: &Simulator, method: &str, params: Value) -> (u16, Value) {
    keywatch::rpc::transport::install_crypto_provider();
    let resp = reqwest::Client::new()
        .post(sim.url())
        .json(&json!({"jsonrpc": "2.0", "id": "dontcare", "method": method, "params": params}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// Same keys at every level and the same JSON types (arrays compared by
/// their first element).
fn same_shape(path: &str, sample: &Value, sim: &Value) -> Result<(), String> {
    let kind = |v: &Value| match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    match (sample, sim) {
        (Value::Object(a), Value::Object(b)) => {
            let ka: BTreeSet<_> = a.keys().collect();
            let kb: BTreeSet<_> = b.keys().collect();
            if ka != kb {
                return Err(format!(
                    "{path}: keys differ: sample {ka:?}, simulator {kb:?}"
                ));
            }
            for k in ka {
                same_shape(&format!("{path}.{k}"), &a[k], &b[k])?;
            }
            Ok(())
        }
        (Value::Array(a), Value::Array(b)) => match (a.first(), b.first()) {
            (Some(x), Some(y)) => same_shape(&format!("{path}[0]"), x, y),
            _ => Ok(()),
        },
        (a, b) if kind(a) == kind(b) => Ok(()),
        (a, b) => Err(format!(
            "{path}: sample has {}, simulator {}",
            kind(a),
            kind(b)
        )),
    }
}

fn assert_shape(what: &str, sample: &Value, sim: &Value) {
    if let Err(e) = same_shape(what, sample, sim) {
        panic!("{e}\nsample: {sample}\nsimulator: {sim}");
    }
}

fn sample_body(path: &str) -> (Option<u16>, Value) {
    let full = crate::samples::samples_dir().join(path);
    let doc: Value = serde_json::from_slice(&std::fs::read(full).unwrap()).unwrap();
    match doc.get("response") {
        Some(r) => (doc["http_status"].as_u64().map(|s| s as u16), r.clone()),
        None => (None, doc),
    }
}

/// The first change of one `type` and cause type in a changes result.
fn change_of<'a>(list: &'a Value, ty: &str, cause: &str) -> &'a Value {
    list["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == ty && c["cause"]["type"] == cause)
        .unwrap_or_else(|| panic!("no {ty} caused by {cause} in {list}"))
}

/// Compares the simulator's change of `ty` with the sample's, cause for cause.
fn assert_change_shape(sample: &Value, sim: &Value, ty: &str) {
    let cause = change_of_any(sample, ty)["cause"]["type"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_shape(
        ty,
        change_of(sample, ty, &cause),
        change_of(sim, ty, &cause),
    );
}

fn change_of_any<'a>(list: &'a Value, ty: &str) -> &'a Value {
    list["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == ty)
        .unwrap_or_else(|| panic!("no {ty} in {list}"))
}

#[tokio::test]
async fn results_have_the_shapes_of_a_current_node() {
    let s = sim("current").await;
    s.run_to_end();
    let (status, st) = raw(&s, "status", json!([])).await;
    assert_eq!(status, 200);
    assert_shape("status", &sample_result("status.json"), &st["result"]);
    let (_, block) = raw(&s, "block", json!({"finality": "final"})).await;
    assert_shape("block", &sample_result("block.json"), &block["result"]);

    let alice = json!(["alice.near"]);
    let (_, keys) = raw(
        &s,
        "changes",
        json!({"changes_type": "all_access_key_changes", "account_ids": alice, "block_id": 101}),
    )
    .await;
    let sample = sample_result("experimental_changes_all_access_key_changes.json");
    assert_change_shape(&sample, &keys["result"], "access_key_update");
    assert_shape(
        "changes envelope",
        &json!({"block_hash": sample["block_hash"]}),
        &json!({"block_hash": keys["result"]["block_hash"]}),
    );
    let (_, accs) = raw(
        &s,
        "changes",
        json!({"changes_type": "account_changes", "account_ids": ["alice.near"], "block_id": 104}),
    )
    .await;
    let sample = sample_result("experimental_changes_account_changes.json");
    assert_change_shape(&sample, &accs["result"], "account_update");
    let (_, deleted) = raw(&s, "changes", json!({"changes_type": "all_access_key_changes", "account_ids": ["bob.near"], "block_id": 105})).await;
    let sample = sample_result(
        "localnet-protocol-61/experimental_changes_all_access_key_changes_account_deleted.json",
    );
    assert_change_shape(&sample, &deleted["result"], "access_key_deletion");
    let (_, gone) = raw(
        &s,
        "changes",
        json!({"changes_type": "account_changes", "account_ids": ["bob.near"], "block_id": 105}),
    )
    .await;
    let sample = sample_result(
        "localnet-protocol-61/experimental_changes_account_changes_account_deleted.json",
    );
    assert_change_shape(&sample, &gone["result"], "account_deletion");
    let (_, nonce) = raw(&s, "changes", json!({"changes_type": "all_access_key_changes", "account_ids": ["alice.near"], "block_id": 108})).await;
    let sample = sample_result("generated/generated_changes_all_value_variants.json");
    assert_change_shape(&sample, &nonce["result"], "gas_key_nonce_update");

    let (_, code) = raw(&s, "changes", json!({"changes_type": "contract_code_changes", "account_ids": ["alice.near"], "block_id": 104})).await;
    assert_change_shape(
        &sample_result("experimental_changes_contract_code_changes.json"),
        &code["result"],
        "contract_code_update",
    );
    let (_, single) = raw(&s, "changes", json!({"changes_type": "single_access_key_changes", "keys": [{"account_id": "alice.near", "public_key": ALICE_FC}], "block_id": 102})).await;
    assert_change_shape(
        &sample_result("experimental_changes_single_access_key_changes.json"),
        &single["result"],
        "access_key_update",
    );
    assert_eq!(
        single["result"]["changes"].as_array().unwrap().len(),
        1,
        "only the asked key"
    );
    let (_, effects) = raw(&s, "block_effects", json!({"block_id": 105})).await;
    assert_shape(
        "block_effects",
        &sample_result("experimental_changes_in_block.json"),
        &effects["result"],
    );

    let q = |rt: &str, extra: Value| {
        let mut p = json!({"request_type": rt, "finality": "final", "account_id": "alice.near"});
        p.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        p
    };
    let (_, view) = raw(&s, "query", q("view_account", json!({}))).await;
    assert_shape(
        "view_account",
        &sample_result("view_account.json"),
        &view["result"],
    );
    let (_, ak) = raw(
        &s,
        "query",
        q("view_access_key", json!({"public_key": ALICE_FC})),
    )
    .await;
    assert_shape(
        "view_access_key",
        &sample_result("view_access_key.json"),
        &ak["result"],
    );
    let (status, missing) = raw(
        &s,
        "query",
        q("view_access_key", json!({"public_key": BOB_FULL})),
    )
    .await;
    assert_eq!(status, 200, "a missing key is a successful result");
    assert_shape(
        "missing key",
        &sample_result("localnet-protocol-61/view_access_key_missing.json"),
        &missing["result"],
    );
    let (_, list) = raw(
        &s,
        "query",
        q("view_access_key_list", json!({"limit": 100})),
    )
    .await;
    assert_shape(
        "view_access_key_list",
        &sample_result("view_access_key_list.json"),
        &list["result"],
    );
    let (_, page) = raw(&s, "query", q("view_access_key_list", json!({"limit": 1}))).await;
    assert_shape(
        "paginated list",
        &sample_result("generated/generated_view_access_key_list_paginated.json"),
        &page["result"],
    );
}

#[tokio::test]
async fn errors_have_the_envelopes_and_http_codes_of_a_current_node() {
    let s = sim("current").await;
    s.run_to_end();
    let head = s.with_chain(|c| c.head().header.height);
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "block",
            json!({"block_id": 103}),
            422,
            "generated/generated_error_block_unknown_block.json",
        ),
        (
            "block",
            json!({"block_id": head + 50}),
            200,
            "generated/generated_error_block_unknown_block.json",
        ),
        (
            "changes",
            json!({"changes_type": "account_changes", "account_ids": ["alice.near"], "block_id": 107}),
            422,
            "generated/generated_error_changes_unknown_block.json",
        ),
        (
            "query",
            json!({"request_type": "view_account", "account_id": "alice.near", "block_id": 103}),
            422,
            "generated/generated_error_query_unknown_block_legacy_data.json",
        ),
        (
            "query",
            json!({"request_type": "view_account", "account_id": "alice.near", "block_id": 100}),
            200,
            "generated/generated_error_garbage_collected_block.json",
        ),
        (
            "query",
            json!({"request_type": "view_account", "account_id": "nobody.near", "finality": "final"}),
            200,
            "generated/generated_error_unknown_account.json",
        ),
        (
            "query",
            json!({"request_type": "view_account", "account_id": "bob.near", "finality": "final"}),
            200,
            "localnet-protocol-61/view_account_deleted.json",
        ),
        (
            "EXPERIMENTAL_nope",
            json!({}),
            400,
            "generated/generated_error_method_not_found.json",
        ),
        (
            "block",
            json!({"block_id": "not-a-height", "finality": "final"}),
            400,
            "generated/generated_error_parse_error.json",
        ),
    ];
    for (method, params, code, sample) in cases {
        let (status, body) = raw(&s, method, params.clone()).await;
        assert_eq!(status, code, "{method} {params}: {body}");
        let (_, expected) = sample_body(sample);
        assert_shape(&format!("{method} {params}"), &expected, &body);
        assert_eq!(
            body["error"]["cause"]["name"], expected["error"]["cause"]["name"],
            "{method} {params}"
        );
    }
    // too many keys for an unpaginated request
    let s2 = many_keys("many.near", 5, 9, "key_page_limit = 3\n").await;
    let (status, body) = raw(&s2, "query", json!({"request_type": "view_access_key_list", "account_id": "many.near", "finality": "final"})).await;
    assert_eq!(status, 200);
    assert_shape(
        "too many keys",
        &sample_body("generated/generated_error_too_many_access_keys.json").1,
        &body,
    );
    // injected internal errors and timeouts
    let plan = FaultPlan {
        rules: vec![
            FaultRule {
                method: Some("status".into()),
                kind: FaultKind::Internal,
                probability: Some(1.0),
                requests: vec![],
            },
            FaultRule {
                method: Some("block".into()),
                kind: FaultKind::Timeout,
                probability: Some(1.0),
                requests: vec![],
            },
        ],
        ..FaultPlan::default()
    };
    s.set_faults(plan);
    let (status, body) = raw(&s, "status", json!([])).await;
    assert_eq!(status, 500);
    assert_shape(
        "internal",
        &sample_body("generated/generated_error_query_internal.json").1,
        &body,
    );
    let (status, body) = raw(&s, "block", json!({"finality": "final"})).await;
    assert_eq!(
        (status, body["error"]["cause"]["name"].as_str()),
        (408, Some("TIMEOUT_ERROR"))
    );
}

#[tokio::test]
async fn a_legacy_node_answers_like_the_captured_protocol_61_node() {
    let s = sim("legacy").await;
    s.run_to_end();
    let (_, st) = raw(&s, "status", json!([])).await;
    assert_shape(
        "status",
        &sample_result("localnet-protocol-61/status.json"),
        &st["result"],
    );
    assert_eq!(st["result"]["protocol_version"], 61);
    let (_, block) = raw(&s, "block", json!({"finality": "final"})).await;
    assert_shape(
        "block",
        &sample_result("localnet-protocol-61/block_final.json"),
        &block["result"],
    );
    for (method, sample) in [
        (
            "changes",
            "localnet-protocol-61/error_method_not_found_changes.json",
        ),
        (
            "block_effects",
            "localnet-protocol-61/error_method_not_found_block_effects.json",
        ),
    ] {
        let (status, body) = raw(&s, method, json!({"changes_type": "account_changes", "account_ids": ["alice.near"], "finality": "final"})).await;
        let (code, expected) = sample_body(sample);
        assert_eq!(
            Some(status),
            code,
            "{method}: old nodes answer errors with HTTP 200"
        );
        assert_shape(method, &expected, &body);
    }
    let (status, body) = raw(&s, "block", json!({"block_id": 103})).await;
    assert_eq!(
        status, 200,
        "UNKNOWN_BLOCK below the head is 200 on an old node"
    );
    assert_shape(
        "unknown block",
        &sample_body("localnet-protocol-61/error_unknown_block_future.json").1,
        &body,
    );
    let (_, list) = raw(&s, "query", json!({"request_type": "view_access_key_list", "account_id": "alice.near", "finality": "final", "limit": 1})).await;
    let truth = s.with_chain(|c| {
        c.keys_at(&acc("alice.near"), c.final_block().header.height)
            .len()
    });
    assert_eq!(truth, 3);
    assert_eq!(
        list["result"]["keys"].as_array().unwrap().len(),
        truth,
        "no pagination: limit is ignored"
    );
    assert!(list["result"].get("last_key").is_none());
    assert_shape(
        "key list",
        &sample_result("localnet-protocol-61/view_access_key_list.json"),
        &list["result"],
    );
}

/// A simulator whose only account holds `n` full-access keys.
async fn many_keys(id: &str, n: u64, seed: u64, chain_extra: &str) -> Simulator {
    let keys: String = (0..n)
        .map(|i| {
            format!(
                "{{ key = \"{}\", permission = \"full_access\" }},",
                keywatch::sim::scenario::seeded_key(seed, i)
            )
        })
        .collect();
    let text = format!(
        "[chain]\nstart_height = 10\n{chain_extra}[[accounts]]\nid = \"{id}\"\namount = \"1\"\nkeys = [{keys}]\n"
    );
    Simulator::start(
        Scenario::from_toml(&text, "many keys").unwrap(),
        SimOptions::default(),
    )
    .await
    .unwrap()
}

fn client(sim: &Simulator) -> RpcClient {
    RpcClient::new(RpcSettings {
        urls: vec![sim.url()],
        backoff_min: std::time::Duration::from_millis(1),
        backoff_max: std::time::Duration::from_millis(5),
        ..RpcSettings::default()
    })
    .unwrap()
}

#[tokio::test]
async fn the_rpc_client_works_unchanged_against_both_profiles() {
    for profile in ["current", "legacy"] {
        let s = sim(profile).await;
        s.run_to_end();
        let c = client(&s);
        let status = c.verify_chain("localnet").await.unwrap();
        assert_eq!(
            status.sync_info.earliest_block_height.unwrap(),
            s.with_chain(|ch| ch.earliest().header.height)
        );
        let head = c.block(&BlockRef::Final).await.unwrap().header;
        let by_hash = c
            .block(&BlockRef::Hash(head.hash.clone()))
            .await
            .unwrap()
            .header;
        assert_eq!(by_hash, head);
        let alice = [acc("alice.near")];
        let added = c
            .changes(&BlockRef::Height(101), ChangesKind::AllAccessKeys, &alice)
            .await
            .unwrap();
        assert!(added.changes.iter().any(|ch| matches!(&ch.value, ChangeValue::AccessKeyUpdate { public_key, .. } if public_key.as_str() == NEW_KEY)), "{profile}");
        let effects = c.block_effects(&BlockRef::Height(105)).await.unwrap();
        assert!(
            effects
                .touched
                .iter()
                .any(|t| t.account_id.as_str() == "bob.near"),
            "{profile}"
        );
        let (keys, at) = c
            .view_access_key_list(&BlockRef::Final, &acc("alice.near"))
            .await
            .unwrap();
        let truth = s.with_chain(|ch| ch.keys_at(&acc("alice.near"), at.block_height));
        assert_eq!(keys.len(), truth.len(), "{profile}");
        for k in &keys {
            assert_eq!(
                k.access_key.permission, truth[&k.public_key].permission,
                "{profile}"
            );
        }
        let missing = c
            .view_access_key(&BlockRef::Final, &acc("alice.near"), &key(BOB_FULL))
            .await
            .unwrap();
        assert!(missing.is_none());
        assert!(
            c.view_account_opt(&BlockRef::Final, &acc("bob.near"))
                .await
                .unwrap()
                .is_none(),
            "deleted account"
        );
    }
}

#[tokio::test]
async fn pagination_walks_every_key_of_a_large_account() {
    let s = many_keys("exchange.near", 250, 5, "").await;
    let (keys, _) = client(&s)
        .view_access_key_list(&BlockRef::Final, &acc("exchange.near"))
        .await
        .unwrap();
    let distinct: BTreeSet<_> = keys.iter().map(|k| k.public_key.clone()).collect();
    assert_eq!((keys.len(), distinct.len()), (250, 250));
    assert_eq!(s.requests(), 3, "three pages of at most 100");
}

#[tokio::test]
async fn the_story_writes_the_changes_a_real_node_would() {
    let s = sim("current").await;
    s.run_to_end();
    s.with_chain(|c| {
        assert!(c.refused().is_empty(), "{:?}", c.refused());
        let heights: Vec<u64> = c.blocks().iter().map(|b| b.header.height).collect();
        assert!(!heights.contains(&103) && !heights.contains(&107), "skipped heights have no block");
        for w in c.blocks().windows(2) {
            assert_eq!(w[1].header.prev_hash, w[0].header.hash, "prev_hash links every block");
            assert!(w[1].header.timestamp_ns > w[0].header.timestamp_ns);
        }
        let block = |h: u64| c.block_by_height(h).unwrap();
        let summary = |h: u64| -> Vec<(String, String, String)> {
            block(h)
                .changes
                .iter()
                .map(|ch| {
                    let detail = match &ch.value {
                        ChangeValue::AccessKeyUpdate { public_key, access_key, .. } => format!("{} nonce={} allowance={:?}", &public_key.as_str()[..12], access_key.nonce, access_key.permission.allowance().map(|a| a.0)),
                        ChangeValue::AccessKeyDeletion { public_key, .. } => public_key.as_str()[..12].to_string(),
                        ChangeValue::AccountUpdate { account_id, state } => format!("{account_id} amount={}", state.amount.0),
                        ChangeValue::GasKeyNonceUpdate { index, nonce, .. } => format!("slot {index} nonce={nonce}"),
                        other => other.account_id().map(|a| a.to_string()).unwrap_or_default(),
                    };
                    (ch.value.type_name().to_string(), ch.cause.kind.name().to_string(), detail)
                })
                .collect()
        };
        let t = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
        let fee = 19_300_000_000_000_000_000_000u128; // the default fee
        let ten = 10 * YOCTO_PER_NEAR;
        // 101: AddKey signed by alice's full-access key. Trie order lists the
        // account first, then keys by bytes: the new key's receipt write
        // comes before the signer's nonce bump, as in the real capture.
        assert_eq!(summary(101), vec![
            t("account_update", "transaction_processing", &format!("alice.near amount={}", ten - fee)),
            t("access_key_update", "transaction_processing", "ed25519:2czE nonce=99000001 allowance=None"),
            t("access_key_update", "receipt_processing", "ed25519:8FtS nonce=100000000 allowance=None"),
        ]);
        // 102: a call with the function-call key: allowance 1 - 0.3
        assert_eq!(summary(102), vec![
            t("account_update", "transaction_processing", &format!("alice.near amount={}", ten - fee - 3 * YOCTO_PER_NEAR / 10)),
            t("access_key_update", "transaction_processing", &format!("ed25519:GbRg nonce=99000001 allowance=Some({})", 7 * YOCTO_PER_NEAR / 10)),
        ]);
        // 104 (103 skipped): the refund of 102 was due at 104, and a second
        // call lands in the same block: two writes of one key, in order.
        let s104 = summary(104);
        let fc: Vec<_> = s104.iter().filter(|x| x.2.starts_with("ed25519:GbRg")).collect();
        assert_eq!(fc.len(), 2, "{s104:?}");
        assert_eq!(fc[0].1, "receipt_processing", "the refund receipt first (deferred receipts apply before new transactions)");
        assert!(fc[0].2.ends_with(&format!("allowance=Some({})", 8 * YOCTO_PER_NEAR / 10)));
        assert_eq!(fc[1].1, "transaction_processing");
        assert!(fc[1].2.ends_with(&format!("allowance=Some({})", 5 * YOCTO_PER_NEAR / 10)));
        // 105: bob deleted: his key, then the account, in one block; the
        // last account_update still shows the full amount minus the fee
        assert_eq!(summary(105).iter().filter(|x| x.0 != "access_key_update" || !x.2.starts_with("ed25519:GbRg")).filter(|x| !x.2.starts_with("alice")).cloned().collect::<Vec<_>>(), vec![
            t("account_update", "transaction_processing", &format!("bob.near amount={}", 4 * YOCTO_PER_NEAR)),
            t("account_deletion", "receipt_processing", "bob.near"),
            t("access_key_update", "transaction_processing", "ed25519:5kbY nonce=99000001 allowance=None"),
            t("access_key_deletion", "receipt_processing", "ed25519:5kbY"),
        ]);
        // 105 also carries the refund of 104 (refund_after = 1)
        assert!(summary(105).iter().any(|x| x.2.contains(&format!("allowance=Some({})", 6 * YOCTO_PER_NEAR / 10))));
        // 106: bob's remaining 4 NEAR reach alice; the gas key is added with view nonce 0
        let s106 = summary(106);
        assert!(s106.iter().any(|x| x.0 == "account_update" && x.1 == "receipt_processing"), "{s106:?}");
        assert!(s106.iter().any(|x| x.2 == "ed25519:8GGz nonce=0 allowance=None"), "{s106:?}");
        // 108 (107 skipped): the gas key signs from slot 1: its nonce slot
        // moves from the seed value, its balance pays, the account does not
        let s108 = summary(108);
        assert!(s108.contains(&t("gas_key_nonce_update", "transaction_processing", "slot 1 nonce=105000001")), "{s108:?}");
        let debits = s108.iter().filter(|x| x.0 == "account_update" && x.1 == "transaction_processing").count();
        assert_eq!(debits, 1, "only the add_key transaction debits the account; the gas key pays its own fee: {s108:?}");
        let gas = c.keys_at(&acc("alice.near"), 108)[&key(GAS_KEY)].permission.clone();
        assert_eq!(gas, Permission::GasKeyFullAccess { balance: near(0.4), num_nonces: 2 });
        assert_eq!(c.gas_key_nonces(&acc("alice.near"), &key(GAS_KEY)), Some(&[105_000_000, 105_000_001][..]));
        assert!(c.keys_at(&acc("alice.near"), 108).contains_key(&key(ML_DSA)), "an ML-DSA handle as a key");
        // ground truth: bob is gone with no keys; alice's balance adds up
        assert!(c.account_at(&acc("bob.near"), 105).is_none());
        assert!(c.keys_at(&acc("bob.near"), 105).is_empty());
        assert_eq!(c.account_at(&acc("bob.near"), 104).unwrap().amount, Yocto(5 * YOCTO_PER_NEAR));
        let alice_end = c.account_at(&acc("alice.near"), c.head().header.height).unwrap().amount;
        // three add_keys (the new key, the gas key, the ML-DSA handle) and a
        // deploy pay the default fee; two calls pay 0.3 and get 0.1 back each;
        // the gas key's call is paid by the gas key; bob's 4 NEAR arrive
        let expected = ten - 4 * fee - 2 * 3 * YOCTO_PER_NEAR / 10 + 2 * YOCTO_PER_NEAR / 10 + 4 * YOCTO_PER_NEAR;
        assert_eq!(alice_end, Yocto(expected), "fees, calls, refunds and bob's remainder");
        // the GC horizon: only the last 8 blocks are served
        assert_eq!(c.earliest().header.height, c.blocks()[c.blocks().len() - 8].header.height);
        let causes: BTreeSet<String> = c.changes_of(&acc("alice.near")).iter().map(|(_, ch)| ch.cause.kind.name().to_owned()).collect();
        assert_eq!(causes, BTreeSet::from(["receipt_processing".to_owned(), "transaction_processing".to_owned()]));
    });
}

#[tokio::test]
async fn final_lags_the_head_and_on_read_produces_blocks() {
    let s = Simulator::start(
        scenario("current"),
        SimOptions {
            clock: Clock::OnRead,
            until: Some(110),
            ..SimOptions::default()
        },
    )
    .await
    .unwrap();
    let c = client(&s);
    let mut seen = vec![];
    for _ in 0..12 {
        seen.push(c.block(&BlockRef::Final).await.unwrap().header.height);
    }
    assert_eq!(
        seen.last(),
        Some(&108),
        "the head stops at 110 and final is two blocks behind"
    );
    assert!(seen.windows(2).all(|w| w[0] <= w[1]));
    let head = c.status().await.unwrap().sync_info.latest_block_height;
    assert_eq!(head, 110);
}

#[tokio::test]
async fn faults_are_reproducible_from_a_seed() {
    let plan = |seed| FaultPlan {
        seed,
        latency_ms: Some((0, 3)),
        rules: vec![
            FaultRule {
                method: None,
                kind: FaultKind::RateLimit { retry_after: 0 },
                probability: Some(0.15),
                requests: vec![],
            },
            FaultRule {
                method: Some("block".into()),
                kind: FaultKind::BadGateway,
                probability: Some(0.1),
                requests: vec![],
            },
            FaultRule {
                method: None,
                kind: FaultKind::Truncated,
                probability: Some(0.1),
                requests: vec![],
            },
            FaultRule {
                method: None,
                kind: FaultKind::Drop,
                probability: Some(0.05),
                requests: vec![],
            },
            FaultRule {
                method: Some("status".into()),
                kind: FaultKind::Malformed,
                probability: None,
                requests: vec![2],
            },
        ],
    };
    async fn outcomes(plan: FaultPlan) -> Vec<String> {
        let s = Simulator::start(
            scenario("current"),
            SimOptions {
                faults: Some(plan),
                ..SimOptions::default()
            },
        )
        .await
        .unwrap();
        s.run_to_end();
        keywatch::rpc::transport::install_crypto_provider();
        let http = reqwest::Client::new();
        let mut out = vec![];
        for i in 0..60 {
            let method = if i % 2 == 0 { "status" } else { "block" };
            let params = if i % 2 == 0 {
                json!([])
            } else {
                json!({"finality": "final"})
            };
            let resp = http
                .post(s.url())
                .json(&json!({"jsonrpc": "2.0", "id": i, "method": method, "params": params}))
                .send()
                .await;
            out.push(match resp {
                Err(_) => "connection error".to_string(),
                Ok(r) => {
                    let status = r.status().as_u16();
                    match r.text().await {
                        Ok(body) => format!(
                            "{status} {}",
                            serde_json::from_str::<Value>(&body)
                                .map(|_| "json")
                                .unwrap_or("not json")
                        ),
                        Err(_) => format!("{status} dropped"),
                    }
                }
            });
        }
        out
    }
    let a = outcomes(plan(11)).await;
    let b = outcomes(plan(11)).await;
    let c = outcomes(plan(12)).await;
    assert_eq!(a, b, "the same seed gives the same faults");
    assert_ne!(a, c, "another seed gives other faults");
    for kind in ["429 not json", "502 not json", "200 not json", "200 json"] {
        assert!(a.iter().any(|o| o == kind), "{kind} missing from {a:?}");
    }
    assert!(
        a.iter()
            .any(|o| o.contains("dropped") || o == "connection error"),
        "{a:?}"
    );
    assert_eq!(
        a[4], "200 not json",
        "the scheduled malformed status (third status request)"
    );
}

#[tokio::test]
async fn the_client_rides_out_injected_faults() {
    let plan = FaultPlan {
        seed: 5,
        latency_ms: None,
        rules: vec![
            FaultRule {
                method: None,
                kind: FaultKind::RateLimit { retry_after: 0 },
                probability: Some(0.1),
                requests: vec![],
            },
            FaultRule {
                method: None,
                kind: FaultKind::Unavailable,
                probability: Some(0.1),
                requests: vec![],
            },
            FaultRule {
                method: None,
                kind: FaultKind::Truncated,
                probability: Some(0.1),
                requests: vec![],
            },
            FaultRule {
                method: None,
                kind: FaultKind::Drop,
                probability: Some(0.05),
                requests: vec![],
            },
            FaultRule {
                method: None,
                kind: FaultKind::Internal,
                probability: Some(0.05),
                requests: vec![],
            },
        ],
    };
    let s = Simulator::start(
        scenario("current"),
        SimOptions {
            faults: Some(plan),
            ..SimOptions::default()
        },
    )
    .await
    .unwrap();
    s.run_to_end();
    let c = RpcClient::new(RpcSettings {
        urls: vec![s.url()],
        attempts_per_url: 8,
        backoff_min: std::time::Duration::from_millis(1),
        backoff_max: std::time::Duration::from_millis(5),
        ..RpcSettings::default()
    })
    .unwrap();
    for h in [101u64, 102, 104, 105, 106, 108] {
        let changes = c
            .changes(
                &BlockRef::Height(h),
                ChangesKind::AllAccessKeys,
                &[acc("alice.near"), acc("bob.near")],
            )
            .await
            .unwrap();
        let truth = s.with_chain(|ch| {
            ch.block_by_height(h)
                .unwrap()
                .changes
                .iter()
                .filter(|x| {
                    x.value.type_name().starts_with("access_key")
                        || x.value.type_name() == "gas_key_nonce_update"
                })
                .count()
        });
        assert_eq!(changes.changes.len(), truth, "block {h}");
    }
    assert!(s.requests() > 6, "some requests were retried");
}

#[test]
fn the_shipped_scenarios_load_and_play_without_refusals() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let scenario = Scenario::load(&path).unwrap();
            let end = scenario.last_action_height();
            let mut chain = keywatch::sim::Chain::new(scenario);
            while chain.head().header.height < end {
                chain.produce();
            }
            assert!(chain.is_done(), "{}", path.display());
            assert!(
                chain.refused().is_empty(),
                "{}: {:?}",
                path.display(),
                chain.refused()
            );
        }
    }
}

#[test]
fn scenario_mistakes_are_reported_together() {
    let text = r#"
        [chain]
        start_height = 10
        skip = [12]
        profile = "legacy"
        [[accounts]]
        id = "a.near"
        amount = "1"
        keys = [{ key = "ed25519:8GGzH1ySaUbbLGnLwhn1myU3xbQKiYcjJJ9LHTVrMBGK", permission = { gas_key_full_access = { balance = "1", num_nonces = 1 } } }]
        [[actions]]
        at = 12
        do = "call"
        account = "a.near"
        receiver = "b.near"
        [[actions]]
        at = 13
        do = "add_key"
        account = "a.near"
        [[actions]]
        at = 14
        do = "fly"
        account = "a.near"
    "#;
    let err = Scenario::from_toml(text, "bad.toml")
        .unwrap_err()
        .to_string();
    for part in [
        "height 12 is skipped",
        "`add_key` needs `key`",
        "unknown action \"fly\"",
        "legacy profile (protocol 61) has no gas keys",
    ] {
        assert!(err.contains(part), "missing {part:?} in {err}");
    }
}

#[test]
fn generated_scenarios_are_deterministic() {
    let spec = keywatch::sim::scenario::GenSpec {
        seed: 1,
        accounts: 20,
        blocks: 50,
        actions_per_block: 5,
        start_height: 1000,
    };
    let a = Scenario::generate(&spec);
    let b = Scenario::generate(&spec);
    assert_eq!(a.txs, b.txs);
    assert_eq!(a.txs.len(), 250);
    let mut chain = keywatch::sim::Chain::new(a);
    while chain.head().header.height < 1055 {
        chain.produce();
    }
    assert!(
        chain
            .refused()
            .iter()
            .all(|r| r.reason.contains("NotEnoughAllowance")),
        "{:?}",
        chain.refused()
    );
}

#[tokio::test]
async fn the_real_time_clock_produces_blocks_by_itself() {
    let mut sc = scenario("current");
    sc.chain.block_time = std::time::Duration::from_millis(10);
    let s = Simulator::start(
        sc,
        SimOptions {
            clock: Clock::RealTime,
            ..SimOptions::default()
        },
    )
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s.with_chain(|c| c.head().header.height) < 105 {
        assert!(
            std::time::Instant::now() < deadline,
            "no blocks were produced"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
