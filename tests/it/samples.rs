//! Every file under ../shared/rpc-samples parses into typed values through
//! the client's own response path, and the fields that matter are checked.
//! A sample file without a checker here fails the test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use keywatch::domain::{CauseKind, ChangeValue, Permission, PermissionKind, TouchedKind, Yocto};
use keywatch::rpc::RpcError;
use keywatch::rpc::transport::{Reply, interpret};
use keywatch::rpc::views::{
    AccessKeyLookup, AccessKeyView, AccountAt, BlockEffectsView, BlockView, ChangesView,
    KeyListPage, StatusView, cause_from_json, permission_from_json,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

pub fn samples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/rpc-samples")
}

/// A sample: a docs/generated JSON body, or a captured request/response.
struct Sample {
    http_status: u16,
    request: Option<Value>,
    body: Value,
}

impl Sample {
    fn load(path: &Path) -> Sample {
        let doc: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        match (doc.get("request"), doc.get("response")) {
            (Some(req), Some(resp)) => Sample {
                http_status: doc["http_status"].as_u64().unwrap() as u16,
                request: Some(req.clone()),
                body: resp.clone(),
            },
            _ => Sample {
                http_status: 200,
                request: None,
                body: doc,
            },
        }
    }

    fn reply<T: DeserializeOwned>(&self) -> Result<T, RpcError> {
        let method = self
            .request
            .as_ref()
            .and_then(|r| r["method"].as_str())
            .unwrap_or("sample");
        let reply = Reply {
            url: "sample",
            method,
            status: self.http_status,
            retry_after: None,
        };
        interpret(&reply, None, &serde_json::to_vec(&self.body).unwrap())
    }

    fn ok<T: DeserializeOwned>(&self) -> T {
        self.reply()
            .unwrap_or_else(|e| panic!("expected a result: {e}"))
    }

    fn err(&self) -> RpcError {
        match self.reply::<Value>() {
            Err(e) => e,
            Ok(v) => panic!("expected an error, got {v}"),
        }
    }

    /// Samples that hold only the `result` object.
    fn bare<T: DeserializeOwned>(&self) -> T {
        serde_json::from_value(self.body.clone()).unwrap()
    }
}

fn y(s: &str) -> Yocto {
    Yocto::parse(s).unwrap()
}

fn assert_node_error(e: &RpcError, name: &str, cause: &str, retryable: bool) {
    match e {
        RpcError::Node(n) => assert_eq!((n.name.as_str(), n.cause.as_str()), (name, cause)),
        other => panic!("expected a node error, got {other:?}"),
    }
    assert_eq!(e.is_retryable(), retryable, "retryable class of {cause}");
}

fn key_update(v: &ChangeValue) -> (&str, &Permission, u64) {
    match v {
        ChangeValue::AccessKeyUpdate {
            public_key,
            access_key,
            ..
        } => (
            public_key.as_str(),
            &access_key.permission,
            access_key.nonce,
        ),
        other => panic!("expected access_key_update, got {other:?}"),
    }
}

fn account_update(v: &ChangeValue) -> &keywatch::domain::AccountState {
    match v {
        ChangeValue::AccountUpdate { state, .. } => state,
        other => panic!("expected account_update, got {other:?}"),
    }
}

type Check = fn(&Sample);

fn checks() -> BTreeMap<&'static str, Check> {
    let mut m: BTreeMap<&'static str, Check> = BTreeMap::new();
    m.insert("block.json", |s| {
        let b: BlockView = s.ok();
        assert_eq!(b.header.height, 187310138);
        assert_eq!(
            b.header.hash.as_str(),
            "6RWmTYhXCzjMjoY3Mz1rfFcnBm8E6XeDDbFEPUA4sv1w"
        );
        assert_eq!(
            b.header.prev_hash.as_str(),
            "Wj6B3RTv73EWDNbSammRDeA9315RaPyRrJYmiP4nG4X"
        );
        assert_eq!(b.header.timestamp_ns, 1739254177539033760);
    });
    m.insert("block_effects_docs_variant_block_effects_key.json", |s| {
        let e: BlockEffectsView = s.ok();
        assert!(!e.touched.is_empty(), "the block_effects key is accepted");
    });
    m.insert("experimental_changes_account_changes.json", |s| {
        let c: ChangesView = s.ok();
        assert_eq!(c.changes.len(), 2);
        let first = account_update(&c.changes[0].value);
        assert_eq!(first.amount, y("4999184472524996100000000"));
        assert!(first.has_contract());
        assert_eq!(c.changes[1].cause.kind, CauseKind::ActionReceiptGasReward);
        assert_eq!(
            account_update(&c.changes[1].value).amount,
            y("4999212038891301300000000")
        );
    });
    m.insert("experimental_changes_account_deletion_result_only.json", |s| {
        let c: ChangesView = s.bare();
        assert!(matches!(&c.changes[0].value, ChangeValue::AccountDeletion { account_id } if account_id.as_str() == "new-account"));
        assert_eq!(c.changes[0].cause.kind, CauseKind::ReceiptProcessing);
    });
    m.insert(
        "experimental_changes_account_update_result_only.json",
        |s| {
            let c: ChangesView = s.bare();
            let st = account_update(&c.changes[0].value);
            assert_eq!(
                (st.amount, st.locked, st.storage_usage),
                (Yocto(0), Yocto(0), 100)
            );
            assert!(!st.has_contract());
        },
    );
    m.insert("experimental_changes_all_access_key_changes.json", |s| {
        let c: ChangesView = s.ok();
        let (_, p0, n0) = key_update(&c.changes[0].value);
        assert_eq!(
            (p0.kind(), n0),
            (PermissionKind::FullAccess, 187309654000000)
        );
        let (k1, p1, _) = key_update(&c.changes[1].value);
        assert_eq!(k1, "ed25519:EddTahJwZpJjYPPmat7DBm1m2vdrFBzVv7e3T4hzkENd");
        assert_eq!(p1.allowance(), Some(y("150000000000000000000000")));
        assert!(c.changes[1].cause.receipt_hash.is_some());
    });
    m.insert(
        "experimental_changes_all_access_key_changes_tx_and_receipt.json",
        |s| {
            let c: ChangesView = s.ok();
            assert_eq!(c.changes[0].cause.kind, CauseKind::TransactionProcessing);
            assert!(
                c.changes[0].cause.tx_hash.is_some() && c.changes[0].cause.receipt_hash.is_none()
            );
            assert_eq!(c.changes[1].cause.kind, CauseKind::ReceiptProcessing);
            assert!(c.changes[1].cause.receipt_hash.is_some());
            assert_eq!(key_update(&c.changes[1].value).2, 0);
        },
    );
    m.insert("experimental_changes_contract_code_changes.json", |s| {
        let c: ChangesView = s.ok();
        assert!(matches!(&c.changes[0].value, ChangeValue::ContractCodeUpdate { account_id } if account_id.as_str() == "contract.rpc-examples.testnet"));
    });
    m.insert("experimental_changes_data_changes.json", |s| {
        let c: ChangesView = s.ok();
        assert_eq!(c.changes.len(), 2);
        assert!(
            c.changes
                .iter()
                .all(|ch| matches!(ch.value, ChangeValue::DataUpdate { .. }))
        );
    });
    m.insert("experimental_changes_in_block.json", |s| {
        let e: BlockEffectsView = s.ok();
        assert_eq!(e.touched.len(), 9);
        assert_eq!(
            e.touched
                .iter()
                .filter(|t| t.kind == TouchedKind::AccessKey)
                .count(),
            2
        );
        assert_eq!(
            e.touched
                .iter()
                .filter(
                    |t| t.account_id.as_str() == "dev2-nsp.testnet" && t.kind == TouchedKind::Data
                )
                .count(),
            2
        );
    });
    m.insert(
        "experimental_changes_in_block_contract_code_touched.json",
        |s| {
            let e: BlockEffectsView = s.ok();
            assert!(
                e.touched.iter().any(|t| t.kind == TouchedKind::ContractCode
                    && t.account_id.as_str() == "lee.testnet")
            );
        },
    );
    m.insert("experimental_changes_single_access_key_changes.json", |s| {
        let c: ChangesView = s.ok();
        let (_, p, nonce) = key_update(&c.changes[0].value);
        assert_eq!(nonce, 187309654000001);
        assert_eq!(
            p.allowance(),
            Some(y("142924791772640836536480")),
            "allowance charged by the transaction"
        );
    });
    m.insert(
        "experimental_changes_single_access_key_changes_legacy.json",
        |s| {
            let c: ChangesView = s.ok();
            let (_, p, nonce) = key_update(&c.changes[0].value);
            assert_eq!((p.kind(), nonce), (PermissionKind::FullAccess, 1));
        },
    );
    m.insert("status.json", |s| {
        let st: StatusView = s.ok();
        assert_eq!((st.chain_id.as_str(), st.protocol_version), ("testnet", 73));
        assert_eq!(st.sync_info.latest_block_height, 187456272);
        assert_eq!(st.sync_info.earliest_block_height, Some(187251995));
    });
    m.insert("view_access_key.json", |s| {
        match s.ok::<AccessKeyLookup>() {
            AccessKeyLookup::Found(k, at) => {
                assert_eq!(k.nonce, 187309654000001);
                assert_eq!(
                    k.permission.allowance(),
                    Some(y("149788200694421800000000"))
                );
                assert_eq!(k.permission.method_names().unwrap().len(), 5);
                assert_eq!(at.block_height, 187316844);
            }
            other => panic!("{other:?}"),
        }
    });
    m.insert("view_access_key_legacy.json", |s| {
        let k: AccessKeyView = s.ok();
        assert_eq!(k.nonce, 85);
        assert_eq!(k.permission.receiver_id(), Some("client.chainlink.testnet"));
        assert_eq!(
            k.permission.allowance(),
            Some(y("18501534631167209000000000"))
        );
    });
    m.insert("view_access_key_list.json", |s| {
        let page: KeyListPage = s.ok();
        assert_eq!(page.keys.len(), 2);
        assert!(page.last_key.is_none());
        assert!(page.keys[0].access_key.permission.is_full_access());
        assert_eq!(
            page.keys[1].access_key.permission.allowance(),
            Some(y("149788200694421800000000"))
        );
    });
    m.insert("view_access_key_list_legacy.json", |s| {
        let page: KeyListPage = s.ok();
        assert_eq!(page.keys.len(), 12);
        assert_eq!(
            page.keys
                .iter()
                .filter(|k| k.access_key.permission.is_full_access())
                .count(),
            7
        );
        assert_eq!(
            page.keys[0].access_key.permission.allowance(),
            Some(y("9999203942481156415000"))
        );
    });
    m.insert("view_account.json", |s| {
        let a: AccountAt = s.ok();
        assert_eq!(a.account.amount, y("999788200694421800000000"));
        assert_eq!(
            (a.account.storage_usage, a.at.block_height),
            (410, 187440904)
        );
    });

    // generated/: nearcore 2.14 serializations
    m.insert(
        "generated/generated_access_key_permission_variants.json",
        |s| {
            let perms: Vec<Permission> = s
                .body
                .as_array()
                .unwrap()
                .iter()
                .map(|v| permission_from_json(v.clone()).unwrap())
                .collect();
            let kinds: Vec<_> = perms.iter().map(Permission::kind).collect();
            assert_eq!(
                kinds,
                [
                    PermissionKind::FullAccess,
                    PermissionKind::FunctionCall,
                    PermissionKind::FunctionCall,
                    PermissionKind::GasKeyFunctionCall,
                    PermissionKind::GasKeyFullAccess
                ]
            );
            assert_eq!(perms[1].allowance(), Some(y("250000000000000000000000")));
            assert_eq!(perms[2].allowance(), None, "null allowance is unlimited");
            assert_eq!(perms[2].method_names(), Some(&[][..]));
            assert_eq!(
                perms[3].gas_key_balance(),
                Some(y("500000000000000000000000"))
            );
            assert_eq!(perms[3].num_nonces(), Some(4));
            assert!(perms[4].is_full_access(), "GasKeyFullAccess is full access");
            assert_eq!(
                perms[4].gas_key_balance(),
                Some(y("100000000000000000000000"))
            );
            for (p, raw) in perms.iter().zip(s.body.as_array().unwrap()) {
                assert_eq!(&p.to_json(), raw, "permission_raw is the view as received");
            }
        },
    );
    m.insert("generated/generated_changes_all_value_variants.json", |s| {
        let c: ChangesView = s.ok();
        let types: Vec<&str> = c.changes.iter().map(|ch| ch.value.type_name()).collect();
        assert_eq!(
            types,
            [
                "account_update",
                "account_update",
                "account_update",
                "account_update",
                "account_deletion",
                "access_key_update",
                "access_key_update",
                "gas_key_nonce_update",
                "access_key_deletion",
                "data_update",
                "data_deletion",
                "contract_code_update",
                "contract_code_deletion"
            ]
        );
        assert!(
            account_update(&c.changes[1].value)
                .global_contract_hash
                .is_some()
        );
        assert_eq!(
            account_update(&c.changes[2].value)
                .global_contract_account_id
                .as_ref()
                .unwrap()
                .as_str(),
            "wallet.near"
        );
        assert!(
            account_update(&c.changes[2].value).has_contract(),
            "a global contract counts as deployed"
        );
        assert_eq!(
            key_update(&c.changes[6].value).1.kind(),
            PermissionKind::GasKeyFunctionCall
        );
        assert!(matches!(
            &c.changes[7].value,
            ChangeValue::GasKeyNonceUpdate {
                index: 2,
                nonce: 187309654000007,
                ..
            }
        ));
    });
    m.insert("generated/generated_changes_in_block_all_kinds.json", |s| {
        let e: BlockEffectsView = s.ok();
        let kinds: Vec<_> = e.touched.iter().map(|t| t.kind.clone()).collect();
        assert_eq!(
            kinds,
            [
                TouchedKind::Account,
                TouchedKind::AccessKey,
                TouchedKind::Data,
                TouchedKind::ContractCode
            ]
        );
    });
    m.insert("generated/generated_error_block_unknown_block.json", |s| {
        let e = s.err();
        assert_node_error(&e, "HANDLER_ERROR", "UNKNOWN_BLOCK", false);
        assert!(e.is_unknown_block());
    });
    m.insert(
        "generated/generated_error_changes_not_synced_yet.json",
        |s| {
            let e = s.err();
            assert_node_error(&e, "HANDLER_ERROR", "NOT_SYNCED_YET", true);
            assert!(
                matches!(&e, RpcError::Node(n) if n.info.is_none()),
                "unit causes have no info"
            );
        },
    );
    m.insert(
        "generated/generated_error_changes_shard_not_applied.json",
        |s| assert_node_error(&s.err(), "HANDLER_ERROR", "SHARD_NOT_APPLIED", true),
    );
    m.insert(
        "generated/generated_error_changes_unknown_block.json",
        |s| assert_node_error(&s.err(), "HANDLER_ERROR", "UNKNOWN_BLOCK", false),
    );
    m.insert(
        "generated/generated_error_garbage_collected_block.json",
        |s| {
            let e = s.err();
            assert_node_error(&e, "HANDLER_ERROR", "GARBAGE_COLLECTED_BLOCK", false);
            assert!(e.is_garbage_collected());
        },
    );
    m.insert("generated/generated_error_invalid_account.json", |s| {
        assert_node_error(&s.err(), "HANDLER_ERROR", "INVALID_ACCOUNT", false)
    });
    m.insert("generated/generated_error_method_not_found.json", |s| {
        let e = s.err();
        assert_node_error(&e, "REQUEST_VALIDATION_ERROR", "METHOD_NOT_FOUND", false);
        assert!(e.is_method_not_found());
    });
    m.insert("generated/generated_error_no_synced_blocks.json", |s| {
        assert_node_error(&s.err(), "HANDLER_ERROR", "NO_SYNCED_BLOCKS", true)
    });
    m.insert("generated/generated_error_parse_error.json", |s| {
        assert_node_error(&s.err(), "REQUEST_VALIDATION_ERROR", "PARSE_ERROR", false)
    });
    m.insert("generated/generated_error_query_internal.json", |s| {
        assert_node_error(&s.err(), "INTERNAL_ERROR", "INTERNAL_ERROR", true)
    });
    m.insert("generated/generated_error_query_unknown_block.json", |s| {
        assert_node_error(&s.err(), "HANDLER_ERROR", "UNKNOWN_BLOCK", false)
    });
    m.insert(
        "generated/generated_error_query_unknown_block_legacy_data.json",
        |s| assert_node_error(&s.err(), "HANDLER_ERROR", "UNKNOWN_BLOCK", false),
    );
    m.insert("generated/generated_error_too_many_access_keys.json", |s| {
        assert_node_error(&s.err(), "HANDLER_ERROR", "TOO_MANY_ACCESS_KEYS", false)
    });
    m.insert("generated/generated_error_unavailable_shard.json", |s| {
        assert_node_error(&s.err(), "HANDLER_ERROR", "UNAVAILABLE_SHARD", true)
    });
    m.insert(
        "generated/generated_error_unknown_access_key_structured.json",
        |s| assert_node_error(&s.err(), "HANDLER_ERROR", "UNKNOWN_ACCESS_KEY", false),
    );
    m.insert("generated/generated_error_unknown_account.json", |s| {
        let e = s.err();
        assert_node_error(&e, "HANDLER_ERROR", "UNKNOWN_ACCOUNT", false);
        assert!(e.is_unknown_account());
    });
    m.insert("generated/generated_query_view_access_key_missing_legacy_result.json", |s| {
        assert!(matches!(s.ok::<AccessKeyLookup>(), AccessKeyLookup::Missing { at, .. } if at.block_height == 187310138));
    });
    m.insert("generated/generated_state_change_causes.json", |s| {
        let causes: Vec<_> = s
            .body
            .as_array()
            .unwrap()
            .iter()
            .map(|v| cause_from_json(v.clone()).unwrap())
            .collect();
        assert_eq!(causes.len(), 11);
        assert!(
            causes
                .iter()
                .all(|c| !matches!(c.kind, CauseKind::Unknown(_))),
            "every 2.14 cause is known"
        );
        assert!(causes[2].tx_hash.is_some());
        assert_eq!(
            causes.iter().filter(|c| c.receipt_hash.is_some()).count(),
            4
        );
    });
    m.insert(
        "generated/generated_view_access_key_list_paginated.json",
        |s| {
            let page: KeyListPage = s.ok();
            assert_eq!(
                page.last_key.as_ref().unwrap().as_str(),
                "ml-dsa-65-hash:4F9TwuSqWwvoyu7JVZDsupPhC7oYbYNsisBV2yQvyXFn"
            );
            assert_eq!(
                page.keys[1].public_key.key_type(),
                keywatch::domain::KeyType::MlDsa65Hash
            );
            assert!(page.keys[1].access_key.permission.is_full_access());
        },
    );
    m.insert(
        "generated/generated_view_account_global_contract.json",
        |s| {
            let a: AccountAt = s.ok();
            assert_eq!(
                a.account
                    .global_contract_account_id
                    .as_ref()
                    .unwrap()
                    .as_str(),
                "wallet.near"
            );
            assert_eq!(a.account.amount, y("4999184472524996100000000"));
        },
    );

    // localnet-protocol-61/: a real older node (HTTP 200 for errors)
    m.insert("localnet-protocol-61/block_final.json", |s| {
        let b: BlockView = s.ok();
        assert_eq!(
            (b.header.height, b.header.timestamp_ns),
            (130, 1795331870346282541)
        );
        assert_eq!(
            b.header.prev_hash.as_str(),
            "BogGnVewefFt99yZZxJNMoNZpcwbfvFjQm4CDjcuPk6V"
        );
    });
    m.insert(
        "localnet-protocol-61/error_changes_unknown_block_future.json",
        |s| {
            assert_eq!(s.http_status, 200);
            assert_node_error(&s.err(), "HANDLER_ERROR", "UNKNOWN_BLOCK", false);
        },
    );
    m.insert(
        "localnet-protocol-61/error_method_not_found_block_effects.json",
        |s| assert!(s.err().is_method_not_found()),
    );
    m.insert(
        "localnet-protocol-61/error_method_not_found_changes.json",
        |s| assert!(s.err().is_method_not_found()),
    );
    m.insert(
        "localnet-protocol-61/error_unknown_block_future.json",
        |s| assert!(s.err().is_unknown_block()),
    );
    m.insert(
        "localnet-protocol-61/experimental_changes_account_changes_account_deleted.json",
        |s| {
            let c: ChangesView = s.ok();
            assert_eq!(
                account_update(&c.changes[0].value).amount,
                y("99999890268141245600000000"),
                "the last update still shows the full amount"
            );
            assert!(matches!(
                c.changes[1].value,
                ChangeValue::AccountDeletion { .. }
            ));
        },
    );
    m.insert(
        "localnet-protocol-61/experimental_changes_account_changes_deploy.json",
        |s| {
            let c: ChangesView = s.ok();
            assert!(!account_update(&c.changes[0].value).has_contract());
            assert!(
                account_update(&c.changes[1].value).has_contract(),
                "code_hash changed: deployed"
            );
        },
    );
    m.insert("localnet-protocol-61/experimental_changes_all_access_key_changes_account_deleted.json", |s| {
        let c: ChangesView = s.ok();
        assert!(matches!(&c.changes[1].value, ChangeValue::AccessKeyDeletion { public_key, .. } if public_key.as_str().starts_with("ed25519:HJtnkh")));
    });
    m.insert(
        "localnet-protocol-61/experimental_changes_all_access_key_changes_add_key.json",
        |s| {
            let c: ChangesView = s.ok();
            let (_, p, nonce) = key_update(&c.changes[0].value);
            assert_eq!(
                (p.kind(), nonce),
                (PermissionKind::FullAccess, 60000000),
                "a new key starts at (height - 1) * 10^6"
            );
            assert_eq!(c.changes[0].cause.kind, CauseKind::ReceiptProcessing);
        },
    );
    m.insert(
        "localnet-protocol-61/experimental_changes_all_access_key_changes_charge.json",
        |s| {
            let c: ChangesView = s.ok();
            let (_, p, nonce) = key_update(&c.changes[0].value);
            assert_eq!(nonce, 63000001);
            assert_eq!(p.allowance(), Some(y("480702593435045241137368")));
            assert_eq!(c.changes[0].cause.kind, CauseKind::TransactionProcessing);
        },
    );
    m.insert(
        "localnet-protocol-61/experimental_changes_all_access_key_changes_refund.json",
        |s| {
            let c: ChangesView = s.ok();
            let (_, p, _) = key_update(&c.changes[0].value);
            assert_eq!(
                p.allowance(),
                Some(y("499514413116879200000000")),
                "the refund raised the allowance"
            );
            assert_eq!(c.changes[0].cause.kind, CauseKind::ReceiptProcessing);
        },
    );
    m.insert(
        "localnet-protocol-61/experimental_changes_in_block.json",
        |s| {
            let e: BlockEffectsView = s.ok();
            assert_eq!(e.touched.len(), 3);
            assert!(
                e.touched
                    .iter()
                    .all(|t| t.account_id.as_str() == "bob.test.near")
            );
        },
    );
    m.insert("localnet-protocol-61/status.json", |s| {
        let st: StatusView = s.ok();
        assert_eq!(
            (
                st.chain_id.as_str(),
                st.protocol_version,
                st.sync_info.earliest_block_height
            ),
            ("localnet", 61, Some(0))
        );
    });
    m.insert("localnet-protocol-61/view_access_key_list.json", |s| {
        let page: KeyListPage = s.ok();
        assert_eq!(
            page.keys[1].access_key.permission.allowance(),
            Some(y("498057652467516800000000"))
        );
        assert_eq!(
            page.keys[1].access_key.permission.receiver_id(),
            Some("bob.test.near")
        );
    });
    m.insert("localnet-protocol-61/view_access_key_missing.json", |s| {
        assert!(matches!(
            s.ok::<AccessKeyLookup>(),
            AccessKeyLookup::Missing { .. }
        ));
    });
    m.insert("localnet-protocol-61/view_account.json", |s| {
        let a: AccountAt = s.ok();
        assert_eq!(a.account.amount, y("9997888392454685800000000"));
    });
    m.insert("localnet-protocol-61/view_account_deleted.json", |s| {
        let e = s.err();
        assert_node_error(&e, "HANDLER_ERROR", "UNKNOWN_ACCOUNT", false);
    });
    m
}

fn json_files(dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            json_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(
                path.strip_prefix(samples_dir())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
}

#[test]
fn every_rpc_sample_parses_and_its_fields_are_checked() {
    let dir = samples_dir();
    let mut files = Vec::new();
    json_files(&dir, &mut files);
    files.sort();
    assert!(!files.is_empty(), "no samples under {}", dir.display());
    let checks = checks();
    let unchecked: Vec<_> = files
        .iter()
        .filter(|f| !checks.contains_key(f.as_str()))
        .collect();
    assert!(
        unchecked.is_empty(),
        "sample files nothing checks: {unchecked:?}"
    );
    let stale: Vec<_> = checks
        .keys()
        .filter(|k| !files.iter().any(|f| f == *k))
        .collect();
    assert!(
        stale.is_empty(),
        "checks for files that do not exist: {stale:?}"
    );
    for file in &files {
        let sample = Sample::load(&dir.join(file));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            checks[file.as_str()](&sample)
        }));
        assert!(result.is_ok(), "check failed for {file}");
    }
}
