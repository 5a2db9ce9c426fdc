//! Ingestion against the simulator and a real Postgres: what is stored is
//! exactly the chain's history, whatever happens on the way.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use keywatch::config::StartAt;
use keywatch::domain::{
    AccountId, ChangeValue, CryptoHash, Permission, PublicKey, YOCTO_PER_NEAR, Yocto,
};
use keywatch::ingest::IngestError;
use keywatch::ingest::baseline::{init_cursor, start_tracking};
use keywatch::ingest::follower::{FollowOptions, follow};
use keywatch::rpc::{RpcClient, RpcSettings};
use keywatch::sim::scenario::{Action, GenSpec, Tx, seeded_key};
use keywatch::sim::{FaultKind, FaultPlan, FaultRule, Scenario, SimOptions, Simulator};
use keywatch::store::watch::{AddOutcome, NewWatch};
use keywatch::store::{self};
use sqlx::PgPool;

pub const START: u64 = 5000;
const SEED: u64 = 21;
const GAS_KEY: &str = "ed25519:8GGzH1ySaUbbLGnLwhn1myU3xbQKiYcjJJ9LHTVrMBGK";
const ML_DSA: &str = "ml-dsa-65-hash:GRCGKPX6ohVKP1CfKZVFikGUTW7uhtBujSB5j48tWtVE";

pub fn acc(i: usize) -> AccountId {
    AccountId::parse(&format!("acc{i}.sim.near")).unwrap()
}

fn near(n: u128) -> Yocto {
    Yocto(n * YOCTO_PER_NEAR)
}

fn tx(at: u64, account: usize, action: Action) -> Tx {
    Tx {
        at,
        account: acc(account),
        signer: None,
        fee: Yocto(YOCTO_PER_NEAR / 1000),
        refund: Yocto::ZERO,
        refund_after: 2,
        nonce_slot: 0,
        action,
    }
}

/// [`big_scenario`] served, produced up to `START + 5`, with `faults` if
/// given.
pub async fn big_chain(blocks: u64, faults: Option<keywatch::sim::FaultPlan>) -> Simulator {
    let sim = Simulator::start(
        big_scenario(blocks),
        SimOptions {
            faults,
            ..SimOptions::default()
        },
    )
    .await
    .unwrap();
    sim.advance_to(START + 5);
    sim
}

/// `blocks` blocks of seeded traffic on 6 accounts plus every change kind:
/// skipped heights, gas keys (added, used from a nonce slot, funded,
/// deleted), an ML-DSA handle, a deploy, a global contract, stake, several
/// writes of one key in a block with refunds, and an account deletion.
pub fn big_scenario(blocks: u64) -> Scenario {
    let mut sc = Scenario::generate(&GenSpec {
        seed: SEED,
        accounts: 6,
        blocks,
        actions_per_block: 2,
        start_height: START,
    });
    sc.chain.skip = [
        START + 10,
        START + 100,
        START + 101,
        START + 250,
        START + 333,
    ]
    .into_iter()
    .collect();
    let gas = PublicKey::parse(GAS_KEY).unwrap();
    let fc0 = seeded_key(SEED, 2);
    let call = |at, signer: &PublicKey, slot| Tx {
        signer: Some(signer.clone()),
        nonce_slot: slot,
        fee: Yocto(YOCTO_PER_NEAR / 100),
        refund: Yocto(YOCTO_PER_NEAR / 1000),
        refund_after: 1,
        ..tx(
            at,
            0,
            Action::Call {
                receiver: AccountId::parse("app.near").unwrap(),
            },
        )
    };
    let gas_perm = Permission::GasKeyFunctionCall {
        allowance: None,
        balance: Yocto(YOCTO_PER_NEAR / 2),
        receiver_id: "app.near".into(),
        method_names: vec![],
        num_nonces: 3,
    };
    sc.txs.extend([
        tx(
            START + 20,
            0,
            Action::AddKey {
                key: gas.clone(),
                permission: gas_perm,
            },
        ),
        call(START + 30, &gas, 2),
        tx(
            START + 40,
            0,
            Action::AddKey {
                key: PublicKey::parse(ML_DSA).unwrap(),
                permission: Permission::FullAccess,
            },
        ),
        tx(
            START + 50,
            0,
            Action::Deploy {
                code_hash: CryptoHash::from_bytes([7; 32]),
                code_len: 1000,
            },
        ),
        tx(
            START + 60,
            0,
            Action::UseGlobalContract {
                hash: Some(CryptoHash::from_bytes([9; 32])),
                by_account: None,
            },
        ),
        call(START + 70, &fc0, 0),
        call(START + 70, &fc0, 0),
        call(START + 71, &fc0, 0),
        tx(START + 80, 0, Action::Stake { amount: near(10) }),
        tx(
            START + 90,
            0,
            Action::FundGasKey {
                key: gas.clone(),
                amount: Yocto(YOCTO_PER_NEAR / 5),
            },
        ),
        tx(START + 200, 0, Action::DeleteKey { key: gas }),
        tx(
            START + 400,
            1,
            Action::DeleteAccount {
                beneficiary: acc(2),
            },
        ),
    ]);
    sc.txs.sort_by_key(|t| t.at);
    sc
}

pub fn client(url: &str) -> RpcClient {
    RpcClient::new(RpcSettings {
        urls: vec![url.to_owned()],
        timeout: Duration::from_secs(2),
        attempts_per_url: 10,
        backoff_min: Duration::from_millis(1),
        backoff_max: Duration::from_millis(10),
        ..RpcSettings::default()
    })
    .unwrap()
}

fn watch(ids: &[usize]) -> Vec<NewWatch> {
    ids.iter()
        .map(|i| NewWatch {
            account_id: acc(*i),
            label: None,
            expected_keys: vec![],
            cold_keys: vec![],
            allow_missing: false,
        })
        .collect()
}

fn no_stop() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    std::mem::forget(tx);
    rx
}

pub fn opts() -> FollowOptions {
    FollowOptions {
        exit_when_caught_up: true,
        concurrency: 4,
        poll_interval: Duration::from_millis(5),
        ..FollowOptions::default()
    }
}

/// Compares everything stored for every watched account with the chain.
pub async fn assert_matches_chain(pool: &PgPool, sim: &Simulator) {
    let cursor = store::cursor(pool).await.unwrap().unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let watched = store::watch::list(&mut conn).await.unwrap();
    assert!(!watched.is_empty());
    for w in watched {
        let a = &w.account_id;
        let from = w.baseline_height.expect("baseline read");
        // Key writes, with the action judged by replaying the chain.
        type KeyRow = (
            i64,
            String,
            String,
            Option<serde_json::Value>,
            Option<String>,
            Option<i32>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let expected: Vec<KeyRow> = sim.with_chain(|c| {
            let mut present: BTreeSet<PublicKey> = c.keys_at(a, from).into_keys().collect();
            let mut out = vec![];
            for b in c
                .blocks()
                .iter()
                .filter(|b| b.header.height > from && b.header.height <= cursor.height)
            {
                for ch in b
                    .changes
                    .iter()
                    .filter(|ch| ch.value.account_id() == Some(a))
                {
                    let h = b.header.height as i64;
                    let cause = Some(ch.cause.kind.name().to_owned());
                    let tx = ch.cause.tx_hash.as_ref().map(|x| x.to_string());
                    let rc = ch.cause.receipt_hash.as_ref().map(|x| x.to_string());
                    match &ch.value {
                        ChangeValue::AccessKeyUpdate {
                            public_key,
                            access_key,
                            ..
                        } => {
                            let action = if present.insert(public_key.clone()) {
                                "added"
                            } else {
                                "updated"
                            };
                            out.push((
                                h,
                                action.into(),
                                public_key.to_string(),
                                Some(access_key.permission.to_json()),
                                Some(access_key.nonce.to_string()),
                                None,
                                cause,
                                tx,
                                rc,
                            ));
                        }
                        ChangeValue::AccessKeyDeletion { public_key, .. } => {
                            present.remove(public_key);
                            out.push((
                                h,
                                "deleted".into(),
                                public_key.to_string(),
                                None,
                                None,
                                None,
                                cause,
                                tx,
                                rc,
                            ));
                        }
                        ChangeValue::GasKeyNonceUpdate {
                            public_key,
                            index,
                            nonce,
                            ..
                        } => {
                            out.push((
                                h,
                                "nonce_slot".into(),
                                public_key.to_string(),
                                None,
                                Some(nonce.to_string()),
                                Some(i32::from(*index)),
                                cause,
                                tx,
                                rc,
                            ));
                        }
                        _ => {}
                    }
                }
            }
            out
        });
        let stored: Vec<KeyRow> = sqlx::query_as(
            "select block_height, action, public_key, permission_raw, nonce::text, nonce_index, cause, tx_hash, receipt_hash
             from key_history where account_id = $1 and source = 'chain' order by block_height, index_in_block",
        )
        .bind(a.as_str())
        .fetch_all(pool)
        .await
        .unwrap();
        assert_eq!(stored.len(), expected.len(), "{a}: number of key writes");
        for (s, e) in stored.iter().zip(&expected) {
            assert_eq!(s, e, "{a}: key write");
        }
        // Balance writes.
        type BalRow = (
            i64,
            Option<String>,
            Option<String>,
            Option<String>,
            bool,
            Option<String>,
        );
        let expected: Vec<BalRow> = sim.with_chain(|c| {
            c.blocks()
                .iter()
                .filter(|b| b.header.height > from && b.header.height <= cursor.height)
                .flat_map(|b| b.changes.iter().map(move |ch| (b.header.height as i64, ch)))
                .filter(|(_, ch)| ch.value.account_id() == Some(a))
                .filter_map(|(h, ch)| match &ch.value {
                    ChangeValue::AccountUpdate { state, .. } => Some((
                        h,
                        Some(state.amount.to_string()),
                        Some(state.locked.to_string()),
                        Some(state.code_hash.to_string()),
                        false,
                        Some(ch.cause.kind.name().to_owned()),
                    )),
                    ChangeValue::AccountDeletion { .. } => Some((
                        h,
                        None,
                        None,
                        None,
                        true,
                        Some(ch.cause.kind.name().to_owned()),
                    )),
                    _ => None,
                })
                .collect()
        });
        let stored: Vec<BalRow> = sqlx::query_as(
            "select block_height, amount::text, locked::text, code_hash, deleted, cause
             from balance_history where account_id = $1 and source = 'chain' order by block_height, index_in_block",
        )
        .bind(a.as_str())
        .fetch_all(pool)
        .await
        .unwrap();
        assert_eq!(stored, expected, "{a}: balance writes");
        // Current keys, and the key set at every height since the baseline.
        let now: Vec<(String, serde_json::Value, String)> = sqlx::query_as("select public_key, permission_raw, nonce::text from current_keys where account_id = $1 order by public_key")
            .bind(a.as_str())
            .fetch_all(pool)
            .await
            .unwrap();
        let truth = |h: u64| -> BTreeMap<String, (serde_json::Value, String)> {
            sim.with_chain(|c| {
                c.keys_at(a, h)
                    .into_iter()
                    .map(|(k, ak)| {
                        (
                            k.to_string(),
                            (ak.permission.to_json(), ak.nonce.to_string()),
                        )
                    })
                    .collect()
            })
        };
        let now: BTreeMap<_, _> = now.into_iter().map(|(k, p, n)| (k, (p, n))).collect();
        assert_eq!(now, truth(cursor.height), "{a}: current_keys");
        for h in from..=cursor.height {
            let stored: BTreeMap<String, (serde_json::Value, String)> =
                keywatch::store::keys::keys_at(&mut conn, a, h)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|k| (k.public_key, (k.permission_raw, k.nonce.to_string())))
                    .collect();
            assert_eq!(stored, truth(h), "{a}: keys at {h}");
        }
    }
}

/// Watches accounts near genesis (before the chain has moved on), starting
/// at START + 1, then lets the simulator produce the rest of the chain.
/// Key and balance history rows stored.
async fn history_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "select (select count(*) from key_events) + (select count(*) from balance_events)",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn tracked_from_start(pool: &PgPool, sim: &Simulator, rpc: &RpcClient, ids: &[usize]) {
    sim.advance_to(START + 5);
    let out = start_tracking(pool, rpc, "localnet", &watch(ids), false)
        .await
        .unwrap();
    assert!(out.iter().all(|t| t.outcome == AddOutcome::Pending));
    let cursor = init_cursor(pool, rpc, StartAt::Height(START + 1))
        .await
        .unwrap();
    assert_eq!(
        cursor.height, START,
        "the cursor is the parent of the first block"
    );
    sim.run_to_end();
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn ingestion_records_exactly_the_chain_history(pool: PgPool) {
    let sim = Simulator::start(big_scenario(520), SimOptions::default())
        .await
        .unwrap();
    let rpc = client(&sim.url());
    tracked_from_start(&pool, &sim, &rpc, &[0, 1, 2]).await;
    let first = follow(
        &pool,
        &rpc,
        &FollowOptions {
            until_height: Some(START + 300),
            ..opts()
        },
        None,
        no_stop(),
    )
    .await
    .unwrap();
    assert_eq!(first.last_height, START + 300);
    // watched while following: the baseline is read at the cursor
    let added = start_tracking(&pool, &rpc, "localnet", &watch(&[3]), false)
        .await
        .unwrap();
    assert_eq!(
        added[0].outcome,
        AddOutcome::Tracked {
            baseline_height: START + 300
        }
    );
    let rest = follow(&pool, &rpc, &opts(), None, no_stop()).await.unwrap();
    let final_height = sim.with_chain(|c| c.final_block().header.height);
    assert_eq!(rest.last_height, final_height);
    assert!(final_height >= START + 520, "at least 500 blocks");
    assert_matches_chain(&pool, &sim).await;

    // what the rules will read
    let deployed: i64 = sqlx::query_scalar("select count(*) from balance_events where account_id = 'acc0.sim.near' and contract_changed").fetch_one(&pool).await.unwrap();
    assert_eq!(deployed, 2, "the deploy and the global contract");
    let by_deletion: i64 = sqlx::query_scalar("select count(*) from key_events where account_id = 'acc1.sim.near' and by_account_deletion").fetch_one(&pool).await.unwrap();
    assert!(
        by_deletion >= 1,
        "keys removed by the account's deletion are marked"
    );
    let multi: i64 = sqlx::query_scalar("select count(*) from (select 1 from key_history where source = 'chain' group by account_id, public_key, block_height having count(*) > 1) x").fetch_one(&pool).await.unwrap();
    assert!(
        multi >= 1,
        "several writes of one key in one block are all kept"
    );
    let unwatched: i64 = sqlx::query_scalar(
        "select count(*) from key_history where account_id in ('acc4.sim.near', 'acc5.sim.near')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(unwatched, 0);

    let report = keywatch::ingest::reconcile::reconcile(&pool, &rpc, &[], None)
        .await
        .unwrap();
    assert_eq!(
        (report.accounts, report.differences.len()),
        (4, 0),
        "{:?}",
        report.differences
    );
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn replaying_blocks_changes_nothing(pool: PgPool) {
    let sim = Simulator::start(big_scenario(60), SimOptions::default())
        .await
        .unwrap();
    let rpc = client(&sim.url());
    tracked_from_start(&pool, &sim, &rpc, &[0]).await;
    follow(&pool, &rpc, &opts(), None, no_stop()).await.unwrap();
    let before = history_rows(&pool).await;
    let header = sim.with_chain(|c| c.block_by_height(START + 20).unwrap().header.clone());
    let watched = [acc(0)].into_iter().collect();
    let data = keywatch::ingest::fetch::fetch_block(&rpc, header, &watched, 100)
        .await
        .unwrap();
    let again = keywatch::ingest::apply::apply_block(&pool, &data, None, None)
        .await
        .unwrap();
    assert_eq!(again, keywatch::ingest::apply::Applied::AlreadyApplied);
    assert_eq!(history_rows(&pool).await, before);
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn an_account_watched_after_a_block_was_fetched_makes_it_fetched_again(pool: PgPool) {
    let sim = Simulator::start(big_scenario(60), SimOptions::default())
        .await
        .unwrap();
    let rpc = client(&sim.url());
    tracked_from_start(&pool, &sim, &rpc, &[0]).await;
    // acc0 signs at START + 20 (the gas key is added): fetch that block for
    // an empty watch list, then watch acc0 before applying it.
    follow(
        &pool,
        &rpc,
        &FollowOptions {
            until_height: Some(START + 19),
            ..opts()
        },
        None,
        no_stop(),
    )
    .await
    .unwrap();
    let header = sim.with_chain(|c| c.block_by_height(START + 20).unwrap().header.clone());
    let stale = keywatch::ingest::fetch::fetch_block(&rpc, header, &BTreeSet::new(), 100)
        .await
        .unwrap();
    let outcome = keywatch::ingest::apply::apply_block(&pool, &stale, None, None)
        .await
        .unwrap();
    assert_eq!(
        outcome,
        keywatch::ingest::apply::Applied::Refetch([acc(0)].into_iter().collect())
    );
    assert_eq!(
        store::cursor(&pool).await.unwrap().unwrap().height,
        START + 19,
        "nothing was written"
    );
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn ten_percent_rpc_faults_change_nothing(pool: PgPool) {
    let rule = |kind, p| FaultRule {
        method: None,
        kind,
        probability: Some(p),
        requests: vec![],
    };
    let faults = FaultPlan {
        seed: 99,
        latency_ms: Some((0, 2)),
        rules: vec![
            rule(FaultKind::RateLimit { retry_after: 0 }, 0.015),
            rule(FaultKind::BadGateway, 0.015),
            rule(FaultKind::Unavailable, 0.01),
            rule(FaultKind::Truncated, 0.015),
            rule(FaultKind::Malformed, 0.01),
            rule(FaultKind::Drop, 0.01),
            rule(FaultKind::Internal, 0.01),
            rule(FaultKind::Timeout, 0.01),
            rule(FaultKind::Slow { millis: 2500 }, 0.005),
        ],
    };
    let sim = Simulator::start(
        big_scenario(150),
        SimOptions {
            faults: Some(faults),
            ..SimOptions::default()
        },
    )
    .await
    .unwrap();
    let rpc = client(&sim.url());
    tracked_from_start(&pool, &sim, &rpc, &[0, 1, 2]).await;
    follow(&pool, &rpc, &opts(), None, no_stop()).await.unwrap();
    assert_matches_chain(&pool, &sim).await;
    assert!(sim.requests() > 400);
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn a_start_below_the_gc_horizon_is_refused_and_writes_nothing(pool: PgPool) {
    let mut sc = big_scenario(100);
    sc.chain.gc_keep = Some(30);
    let sim = Simulator::start(sc, SimOptions::default()).await.unwrap();
    sim.run_to_end();
    let rpc = client(&sim.url());
    start_tracking(&pool, &rpc, "localnet", &watch(&[0]), false)
        .await
        .unwrap();
    let err = init_cursor(&pool, &rpc, StartAt::Height(START + 1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, IngestError::HistoryGone { next, .. } if next == START + 1),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("archival rpc url") && msg.contains("--accept-gap"),
        "{msg}"
    );
    let blocks: i64 = sqlx::query_scalar("select count(*) from blocks")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(blocks, 0);
    assert!(store::cursor(&pool).await.unwrap().is_none());
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn history_lost_while_stopped_stops_ingestion_unless_the_gap_is_accepted(pool: PgPool) {
    let mut sc = big_scenario(200);
    sc.chain.gc_keep = Some(40);
    let sim = Simulator::start(sc, SimOptions::default()).await.unwrap();
    sim.advance_to(START + 5);
    let rpc = client(&sim.url());
    start_tracking(&pool, &rpc, "localnet", &watch(&[0, 2]), false)
        .await
        .unwrap();
    init_cursor(&pool, &rpc, StartAt::Height(START + 1))
        .await
        .unwrap();
    sim.advance_to(START + 30);
    follow(&pool, &rpc, &opts(), None, no_stop()).await.unwrap();
    let stopped_at = store::cursor(&pool).await.unwrap().unwrap().height;
    // keywatch is down while the node moves on and forgets
    sim.run_to_end();
    let err = follow(&pool, &rpc, &opts(), None, no_stop())
        .await
        .unwrap_err();
    assert!(
        matches!(err, IngestError::HistoryGone { next, .. } if next == stopped_at + 1),
        "{err}"
    );
    assert_eq!(
        store::cursor(&pool).await.unwrap().unwrap().height,
        stopped_at,
        "nothing partial written"
    );

    follow(
        &pool,
        &rpc,
        &FollowOptions {
            accept_gap: true,
            ..opts()
        },
        None,
        no_stop(),
    )
    .await
    .unwrap();
    let (from, to): (i64, i64) = sqlx::query_as("select from_height, to_height from ingest_gaps")
        .fetch_one(&pool)
        .await
        .unwrap();
    let earliest = sim.with_chain(|c| c.earliest().header.height);
    assert_eq!((from as u64, to as u64), (stopped_at + 1, earliest - 1));
    let reconciled: i64 =
        sqlx::query_scalar("select count(*) from key_history where source = 'reconcile'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(reconciled > 0, "baselines re-read at the new start");
    let mut conn = pool.acquire().await.unwrap();
    let gap = keywatch::store::keys::keys_at(&mut conn, &acc(0), stopped_at + 5).await;
    assert!(
        matches!(
            gap,
            Err(keywatch::store::keys::KeysAtError::NotTracked { .. })
        ),
        "no answers from inside the gap"
    );
    let cursor = store::cursor(&pool).await.unwrap().unwrap();
    for i in [0, 2] {
        let stored: BTreeSet<String> = keywatch::store::keys::keys_now(&mut conn, &acc(i))
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.public_key)
            .collect();
        let truth: BTreeSet<String> = sim.with_chain(|c| {
            c.keys_at(&acc(i), cursor.height)
                .into_keys()
                .map(|k| k.to_string())
                .collect()
        });
        assert_eq!(stored, truth);
    }
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn a_lying_prev_hash_stops_ingestion_with_a_clear_error(pool: PgPool) {
    let sim = Simulator::start(big_scenario(80), SimOptions::default())
        .await
        .unwrap();
    sim.run_to_end();
    let bad = START + 50;
    assert!(sim.tamper(bad, |b| b.header.prev_hash =
        CryptoHash::from_bytes([3; 32])));
    let rpc = client(&sim.url());
    tracked_from_start(&pool, &sim, &rpc, &[0]).await;
    let err = follow(&pool, &rpc, &opts(), None, no_stop())
        .await
        .unwrap_err();
    match &err {
        IngestError::Continuity { height, last, .. } => {
            assert_eq!((*height, *last), (bad, bad - 1))
        }
        other => panic!("expected a continuity error, got {other}"),
    }
    assert!(err.to_string().contains("does not continue ours"), "{err}");
    assert_eq!(
        store::cursor(&pool).await.unwrap().unwrap().height,
        bad - 1,
        "every block before it, none after"
    );
    let past: i64 = sqlx::query_scalar("select count(*) from blocks where block_height >= $1")
        .bind(bad as i64)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(past, 0);
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn a_watched_account_deleted_on_chain_can_be_named_again(pool: PgPool) {
    let sim = Simulator::start(big_scenario(60), SimOptions::default())
        .await
        .unwrap();
    let rpc = client(&sim.url());
    tracked_from_start(&pool, &sim, &rpc, &[1]).await;
    sim.advance_to(START + 410); // acc1 is deleted at START + 400
    follow(&pool, &rpc, &opts(), None, no_stop()).await.unwrap();
    // `run` upserts its config accounts at every start
    let again = start_tracking(&pool, &rpc, "localnet", &watch(&[1]), false)
        .await
        .unwrap();
    assert_eq!(again[0].outcome, AddOutcome::Updated);
    assert!(!again[0].exists);
    // a new account that does not exist is still refused
    let err = start_tracking(&pool, &rpc, "localnet", &watch(&[9]), false)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("acc9.sim.near do not exist"),
        "{err}"
    );
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn reconcile_records_and_corrects_drift(pool: PgPool) {
    let sim = Simulator::start(big_scenario(60), SimOptions::default())
        .await
        .unwrap();
    let rpc = client(&sim.url());
    tracked_from_start(&pool, &sim, &rpc, &[0, 2]).await;
    follow(&pool, &rpc, &opts(), None, no_stop()).await.unwrap();
    // corrupt the stored state: a key vanishes, another appears, a balance moves
    let real = seeded_key(SEED, 1).to_string();
    sqlx::query("delete from key_state where account_id = 'acc0.sim.near' and public_key = $1")
        .bind(&real)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("insert into key_state select account_id, $1, permission, permission_raw, allowance, gas_key_balance, receiver_id, method_names, num_nonces, nonce, added_at_height, updated_at_height from key_state where account_id = 'acc2.sim.near' limit 1")
        .bind(GAS_KEY)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "update current_accounts set amount = amount + 1 where account_id = 'acc2.sim.near'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let report = keywatch::ingest::reconcile::reconcile(&pool, &rpc, &[], None)
        .await
        .unwrap();
    let height = report.height;
    let mut found: Vec<String> = report
        .differences
        .iter()
        .map(|d| format!("{} {}", d.account, d.what))
        .collect();
    found.sort();
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(
        found[0].starts_with(&format!(
            "acc0.sim.near current state vs history at block {height}: key {real} is in history but not stored"
        )),
        "{found:#?}"
    );
    assert!(
        found[1].starts_with(&format!(
            "acc2.sim.near current state vs history at block {height}: balance: stored"
        )),
        "{found:#?}"
    );
    assert!(
        found[2].starts_with(&format!(
            "acc2.sim.near current state vs history at block {height}: key {GAS_KEY} is stored but not in history"
        )),
        "{found:#?}"
    );
    let rows: i64 = sqlx::query_scalar("select (select count(*) from key_history where source = 'reconcile') + (select count(*) from balance_history where source = 'reconcile')").fetch_one(&pool).await.unwrap();
    assert_eq!(rows, 3, "each difference is a reconcile row");
    let again = keywatch::ingest::reconcile::reconcile(&pool, &rpc, &[], None)
        .await
        .unwrap();
    assert!(
        again.differences.is_empty(),
        "the corrections fixed the current state: {:?}",
        again.differences
    );
    let runs: i64 = sqlx::query_scalar("select count(*) from reconcile_runs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(runs, 2);
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn a_reconcile_asked_of_the_leader_is_run_there_and_answered(pool: PgPool) {
    use keywatch::ingest::requests::{AskError, Server, ask_leader, reconcile_in_leader};
    use keywatch::store::requests::{self, Kind};
    use std::time::Duration;
    let sim = Simulator::start(big_scenario(60), SimOptions::default())
        .await
        .unwrap();
    let rpc = client(&sim.url());
    tracked_from_start(&pool, &sim, &rpc, &[0, 2]).await;
    follow(&pool, &rpc, &opts(), None, no_stop()).await.unwrap();
    sqlx::query(
        "update current_accounts set amount = amount + 1 where account_id = 'acc2.sim.near'",
    )
    .execute(&pool)
    .await
    .unwrap();
    // nobody serves requests yet: the asker gives up, the request stays queued
    let err = ask_leader(
        &pool,
        "leader-test",
        Kind::Reconcile,
        &["acc0.sim.near".to_owned()],
        Duration::from_millis(300),
    )
    .await
    .unwrap_err();
    let AskError::Timeout { id: queued, .. } = err else {
        panic!("expected a timeout, got {err}");
    };
    assert!(err.to_string().contains("stays queued"), "{err}");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(
        Server {
            pool: pool.clone(),
            rpc: rpc.background(),
            alerts: keywatch::ingest::alerts::AlertContext::from_settings(
                &keywatch::config::Settings::from_toml(
                    &format!("[rpc]\nurls = [\"{}\"]\nchain_id = \"localnet\"", sim.url()),
                    std::path::Path::new("test.toml"),
                    &Default::default(),
                )
                .unwrap(),
            ),
            me: "leader-test".to_owned(),
        }
        .run(stopped),
    );
    let report = reconcile_in_leader(&pool, "leader-test", &[acc(2)], Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    let cursor = keywatch::store::cursor(&pool).await.unwrap().unwrap();
    assert_eq!((report.height, report.accounts), (cursor.height, 1));
    assert_eq!(report.differences.len(), 1, "{:?}", report.differences);
    assert_eq!(report.differences[0].account, acc(2));
    assert!(
        report.differences[0].what.contains("balance"),
        "{:?}",
        report.differences
    );
    // the request queued before the server started was run too, first
    let mut conn = pool.acquire().await.unwrap();
    let earlier = requests::get(&mut conn, queued).await.unwrap().unwrap();
    let Some(Ok(answer)) = earlier.answer else {
        panic!("the queued request was not answered: {earlier:?}");
    };
    assert_eq!(answer["differences"], serde_json::json!([]));
    // an account the leader cannot parse is an error answer, not a crash
    let (_, answer) = ask_leader(
        &pool,
        "leader-test",
        Kind::Reconcile,
        &["NOT AN ACCOUNT".to_owned()],
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert!(
        answer
            .as_ref()
            .is_err_and(|e| e.contains("invalid account id")),
        "{answer:?}"
    );
    stop.send_replace(true);
    server.await.unwrap();
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn runs_of_blocks_in_one_transaction_record_exactly_the_chain_history(pool: PgPool) {
    use keywatch::ingest::apply::{Memory, apply_blocks};
    let sim = Simulator::start(big_scenario(200), SimOptions::default())
        .await
        .unwrap();
    let rpc = client(&sim.url());
    tracked_from_start(&pool, &sim, &rpc, &[0, 1, 2, 3, 4, 5]).await;
    let final_height = sim.with_chain(|c| c.final_block().header.height);
    let headers: Vec<_> = (START + 1..=final_height)
        .filter_map(|h| sim.with_chain(|c| c.block_by_height(h).map(|b| b.header.clone())))
        .collect();
    let watched: BTreeSet<AccountId> = (0..6).map(acc).collect();
    let mut blocks = Vec::new();
    for h in headers {
        blocks.push(
            keywatch::ingest::fetch::fetch_block(&rpc, h, &watched, 100)
                .await
                .unwrap(),
        );
    }
    // The first 40 blocks one at a time, then runs of 25: a key's writes,
    // deletions and re-additions, and an account's updates, fall in one run
    // as well as across two. After every commit, what the follower keeps in
    // memory equals a rebuild from the database.
    let mut memory = Memory::rebuild(&pool, 3).await.unwrap();
    let mut applied = 0;
    let (singles, rest) = blocks.split_at(40);
    for run in singles.chunks(1).chain(rest.chunks(25)) {
        let out = apply_blocks(&pool, run, None, None, &mut memory)
            .await
            .unwrap();
        assert_eq!((out.skipped, out.refetch), (0, None));
        assert_eq!(out.committed.len(), run.len(), "the whole run commits");
        applied += out.committed.len();
        assert_eq!(
            memory,
            Memory::rebuild(&pool, 3).await.unwrap(),
            "after block {}",
            run.last().unwrap().header.height
        );
    }
    assert_eq!(applied, blocks.len());
    assert_eq!(
        store::cursor(&pool).await.unwrap().unwrap().height,
        final_height
    );
    assert_matches_chain(&pool, &sim).await;
    // Applying the same runs again, shifted, changes nothing.
    let before = history_rows(&pool).await;
    let again = apply_blocks(&pool, &blocks[10..40], None, None, &mut memory)
        .await
        .unwrap();
    assert_eq!((again.skipped, again.committed.len()), (30, 0));
    assert_eq!(history_rows(&pool).await, before);
}
