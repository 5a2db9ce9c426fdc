//! The store against a real PostgreSQL: one fresh database per test.

use keywatch::domain::{
    AccessKey, AccountId, AccountState, BlockHeader, Cause, CauseKind, CryptoHash, Permission,
    PublicKey, Yocto,
};
use keywatch::store::history::{
    BalanceRow, HistoryEntry, history, insert_balance_row, upsert_account_state,
};
use keywatch::store::keys::{
    KeyRow, KeysAtError, delete_key_state, insert_key_row, keys_at, keys_now, upsert_key_state,
};
use keywatch::store::watch::{AddOutcome, Baseline, NewWatch};
use keywatch::store::{self, Cursor};
use sqlx::PgPool;

pub fn hash(n: u64) -> CryptoHash {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&n.to_be_bytes());
    b[31] = 1;
    CryptoHash::from_bytes(b)
}

pub fn header(height: u64) -> BlockHeader {
    BlockHeader {
        height,
        hash: hash(height),
        prev_hash: hash(height - 1),
        timestamp_ns: 1_795_331_870_346_282_541 + height * 600_000_000,
    }
}

pub fn key(n: u8) -> PublicKey {
    PublicKey::parse(&format!("ed25519:{}", bs58::encode([n; 32]).into_string())).unwrap()
}

pub fn account(s: &str) -> AccountId {
    AccountId::parse(s).unwrap()
}

fn fc(allowance: Option<u128>) -> AccessKey {
    AccessKey {
        nonce: 41_000_000,
        permission: Permission::FunctionCall {
            allowance: allowance.map(Yocto),
            receiver_id: "app.near".into(),
            method_names: vec!["ping".into()],
        },
    }
}

fn full(nonce: u64) -> AccessKey {
    AccessKey {
        nonce,
        permission: Permission::FullAccess,
    }
}

fn state(amount: u128) -> AccountState {
    AccountState {
        amount: Yocto(amount),
        locked: Yocto(0),
        code_hash: CryptoHash::from_bytes([0; 32]),
        storage_usage: 182,
        global_contract_hash: None,
        global_contract_account_id: None,
    }
}

/// Commits blocks 1..=height (so foreign keys hold) and points the cursor at `height`.
pub async fn chain_to(pool: &PgPool, height: u64) -> Cursor {
    let mut tx = pool.begin().await.unwrap();
    for h in 1..=height {
        store::insert_block(&mut tx, &header(h)).await.unwrap();
    }
    store::advance_cursor(&mut tx, &header(height))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    store::cursor(pool).await.unwrap().unwrap()
}

async fn watch(pool: &PgPool, id: &AccountId, baseline: Baseline) -> AddOutcome {
    let mut tx = pool.begin().await.unwrap();
    let cursor = store::lock_cursor(&mut tx).await.unwrap();
    let w = NewWatch {
        account_id: id.clone(),
        label: None,
        expected_keys: vec![],
        cold_keys: vec![],
        allow_missing: false,
    };
    let out = store::watch::add(&mut tx, &w, cursor.as_ref(), Some(&baseline))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    out
}

/// Writes one chain key event and the matching key state, as the follower will.
async fn chain_key(
    pool: &PgPool,
    id: &AccountId,
    k: &PublicKey,
    height: u64,
    index: i32,
    ak: Option<&AccessKey>,
) {
    let mut tx = pool.begin().await.unwrap();
    let h = header(height);
    store::insert_block(&mut tx, &h).await.unwrap();
    let cause = Cause {
        kind: CauseKind::ReceiptProcessing,
        tx_hash: None,
        receipt_hash: Some(hash(9000 + height)),
    };
    let row = KeyRow {
        account_id: id,
        public_key: k,
        block_height: height,
        block_hash: h.hash.as_str(),
        index_in_block: index,
        action: if ak.is_some() { "added" } else { "deleted" },
        access_key: ak,
        nonce_slot: None,
        cause: Some(&cause),
        source: "chain",
        by_account_deletion: false,
    };
    assert!(insert_key_row(&mut tx, &row).await.unwrap());
    match ak {
        Some(ak) => upsert_key_state(&mut tx, id, k, ak, height).await.unwrap(),
        None => delete_key_state(&mut tx, id, k).await.unwrap(),
    }
    store::advance_cursor(&mut tx, &h).await.unwrap();
    tx.commit().await.unwrap();
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn u128_max_and_zero_round_trip_as_amounts(pool: PgPool) {
    let id = account("whale.near");
    let c = chain_to(&pool, 5).await;
    let huge = AccessKey {
        nonce: u64::MAX,
        ..fc(Some(u128::MAX))
    };
    watch(
        &pool,
        &id,
        Baseline {
            account: Some(state(u128::MAX)),
            keys: vec![(key(1), huge), (key(2), fc(Some(0)))],
        },
    )
    .await;
    let mut tx = pool.begin().await.unwrap();
    let hash5 = header(5).hash.to_string();
    let row = BalanceRow {
        account_id: &id,
        block_hash: &hash5,
        block_height: 5,
        index_in_block: 1,
        state: Some(&state(0)),
        cause: None,
        source: "reconcile",
        contract_changed: false,
    };
    insert_balance_row(&mut tx, &row).await.unwrap();
    tx.commit().await.unwrap();

    let mut conn = pool.acquire().await.unwrap();
    let amounts: Vec<Option<Yocto>> = history(&mut conn, &id)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| match e {
            HistoryEntry::Balance { amount, .. } => Some(amount),
            HistoryEntry::Key { .. } => None,
        })
        .collect();
    assert_eq!(amounts, vec![Some(Yocto(u128::MAX)), Some(Yocto(0))]);
    let keys = keys_now(&mut conn, &id).await.unwrap();
    assert_eq!(keys[0].allowance, Some(Yocto(u128::MAX)));
    assert_eq!(keys[0].nonce, u64::MAX);
    assert_eq!(keys[1].allowance, Some(Yocto(0)));
    let text: String =
        sqlx::query_scalar("select amount::text from balance_history where source = 'baseline'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        text,
        u128::MAX.to_string(),
        "stored exactly in NUMERIC(39,0)"
    );
    assert_eq!(c.height, 5);
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn replaying_a_key_write_inserts_nothing(pool: PgPool) {
    let id = account("relayer.near");
    chain_to(&pool, 3).await;
    watch(
        &pool,
        &id,
        Baseline {
            account: Some(state(1)),
            keys: vec![],
        },
    )
    .await;
    chain_key(&pool, &id, &key(7), 4, 0, Some(&full(3_000_000))).await;
    let mut tx = pool.begin().await.unwrap();
    let h = header(4);
    let again = KeyRow {
        account_id: &id,
        public_key: &key(7),
        block_height: 4,
        block_hash: h.hash.as_str(),
        index_in_block: 0,
        action: "added",
        access_key: Some(&full(3_000_000)),
        nonce_slot: None,
        cause: None,
        source: "chain",
        by_account_deletion: false,
    };
    assert!(
        !insert_key_row(&mut tx, &again).await.unwrap(),
        "the natural key makes a replay a no-op"
    );
    tx.commit().await.unwrap();
    let n: i64 = sqlx::query_scalar("select count(*) from key_history where source = 'chain'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn keys_at_a_height_replay_history_within_the_tracking_span(pool: PgPool) {
    let id = account("treasury.near");
    chain_to(&pool, 10).await;
    // baseline at 10: key 1 full access, key 2 function call
    let out = watch(
        &pool,
        &id,
        Baseline {
            account: Some(state(5)),
            keys: vec![(key(1), full(9_000_000)), (key(2), fc(Some(100)))],
        },
    )
    .await;
    assert_eq!(
        out,
        AddOutcome::Tracked {
            baseline_height: 10
        }
    );
    chain_key(&pool, &id, &key(3), 12, 0, Some(&full(11_000_000))).await; // added at 12
    chain_key(&pool, &id, &key(1), 15, 0, None).await; // deleted at 15
    // delete and re-add key 2 with another allowance in one block: both rows kept, the last wins
    chain_key(&pool, &id, &key(2), 17, 0, None).await;
    chain_key(&pool, &id, &key(2), 17, 1, Some(&fc(Some(7)))).await;

    let mut conn = pool.acquire().await.unwrap();
    let at = |h: u64| {
        let pool = pool.clone();
        let id = id.clone();
        async move {
            let mut conn = pool.acquire().await.unwrap();
            keys_at(&mut conn, &id, h).await.map(|ks| {
                ks.into_iter()
                    .map(|k| (k.public_key, k.allowance))
                    .collect::<Vec<_>>()
            })
        }
    };
    let k = |n: u8| key(n).to_string();
    let expect = |mut v: Vec<(String, Option<Yocto>)>| {
        v.sort();
        v
    };
    assert_eq!(
        at(10).await.unwrap(),
        expect(vec![(k(1), None), (k(2), Some(Yocto(100)))])
    );
    assert_eq!(
        at(11).await.unwrap(),
        expect(vec![(k(1), None), (k(2), Some(Yocto(100)))])
    );
    assert_eq!(
        at(12).await.unwrap(),
        expect(vec![(k(1), None), (k(2), Some(Yocto(100))), (k(3), None)])
    );
    assert_eq!(
        at(15).await.unwrap(),
        expect(vec![(k(2), Some(Yocto(100))), (k(3), None)])
    );
    assert_eq!(
        at(17).await.unwrap(),
        expect(vec![(k(2), Some(Yocto(7))), (k(3), None)])
    );
    let now: Vec<_> = keys_now(&mut conn, &id)
        .await
        .unwrap()
        .into_iter()
        .map(|k| (k.public_key, k.allowance))
        .collect();
    assert_eq!(
        now,
        at(17).await.unwrap(),
        "current state equals history at the cursor"
    );

    assert!(matches!(
        at(18).await,
        Err(KeysAtError::AboveCursor {
            height: 18,
            cursor: 17
        })
    ));
    assert!(matches!(
        at(9).await,
        Err(KeysAtError::NotTracked {
            tracked_from: Some(10),
            ..
        })
    ));
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn a_removed_account_is_not_answered_for_until_watched_again(pool: PgPool) {
    let id = account("hot.exchange.near");
    chain_to(&pool, 20).await;
    watch(
        &pool,
        &id,
        Baseline {
            account: Some(state(5)),
            keys: vec![(key(1), full(1))],
        },
    )
    .await;
    chain_to(&pool, 25).await;
    let mut tx = pool.begin().await.unwrap();
    let cursor = store::lock_cursor(&mut tx).await.unwrap();
    assert!(
        store::watch::remove(&mut tx, &id, cursor.as_ref())
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
    chain_to(&pool, 30).await;
    // watched again at 30 with a different key set
    watch(
        &pool,
        &id,
        Baseline {
            account: Some(state(5)),
            keys: vec![(key(4), full(2))],
        },
    )
    .await;

    let mut conn = pool.acquire().await.unwrap();
    let keys = |ks: Vec<keywatch::store::keys::KeyInfo>| {
        ks.into_iter().map(|k| k.public_key).collect::<Vec<_>>()
    };
    assert_eq!(
        keys(keys_at(&mut conn, &id, 22).await.unwrap()),
        vec![key(1).to_string()]
    );
    assert!(matches!(
        keys_at(&mut conn, &id, 27).await,
        Err(KeysAtError::NotTracked {
            tracked_from: Some(30),
            ..
        })
    ));
    assert_eq!(
        keys(keys_at(&mut conn, &id, 30).await.unwrap()),
        vec![key(4).to_string()]
    );
    assert_eq!(
        keys(keys_now(&mut conn, &id).await.unwrap()),
        vec![key(4).to_string()]
    );
    let listed = store::watch::list(&mut conn).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].baseline_height, Some(30));
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn watching_before_any_cursor_leaves_the_baseline_pending(pool: PgPool) {
    let id = account("new.near");
    let mut tx = pool.begin().await.unwrap();
    let cursor = store::lock_cursor(&mut tx).await.unwrap();
    assert!(cursor.is_none());
    let w = NewWatch {
        account_id: id.clone(),
        label: Some("new".into()),
        expected_keys: vec![key(1)],
        cold_keys: vec![],
        allow_missing: false,
    };
    assert_eq!(
        store::watch::add(&mut tx, &w, None, None).await.unwrap(),
        AddOutcome::Pending
    );
    // adding again only updates label and keys
    let w2 = NewWatch {
        label: Some("renamed".into()),
        ..w
    };
    assert_eq!(
        store::watch::add(&mut tx, &w2, None, None).await.unwrap(),
        AddOutcome::Updated
    );
    tx.commit().await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let listed = store::watch::list(&mut conn).await.unwrap();
    assert_eq!(
        (listed[0].label.as_deref(), listed[0].baseline_height),
        (Some("renamed"), None)
    );
    assert_eq!(listed[0].expected_keys, vec![key(1)]);
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn the_cursor_only_moves_forward(pool: PgPool) {
    chain_to(&pool, 8).await;
    let mut tx = pool.begin().await.unwrap();
    store::advance_cursor(&mut tx, &header(6)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store::cursor(&pool).await.unwrap().unwrap().height, 8);
    let id = account("x.near");
    let mut tx = pool.begin().await.unwrap();
    upsert_account_state(&mut tx, &id, None, 8).await.unwrap();
    tx.commit().await.unwrap();
    let deleted: bool = sqlx::query_scalar("select deleted from current_accounts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(deleted);
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn a_request_is_claimed_once_by_its_leader_and_again_by_the_next(pool: PgPool) {
    use keywatch::store::requests::{self, Kind};
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    listener
        .listen_all([requests::ASKED, requests::DONE])
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let id = requests::ask(&mut conn, Kind::Reconcile, &["alice.near".to_owned()])
        .await
        .unwrap();
    let asked = listener.recv().await.unwrap();
    assert_eq!(
        (asked.channel(), asked.payload()),
        (requests::ASKED, id.to_string().as_str())
    );
    let claimed = requests::claim_next(&mut conn, "leader-a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            claimed.id,
            claimed.kind,
            claimed.accounts.as_slice(),
            claimed.answer
        ),
        (
            id,
            Kind::Reconcile,
            ["alice.near".to_owned()].as_slice(),
            None
        )
    );
    // the leader running it does not claim it twice
    assert_eq!(
        requests::claim_next(&mut conn, "leader-a").await.unwrap(),
        None
    );
    // a leader that took over runs what its predecessor left unfinished
    let again = requests::claim_next(&mut conn, "leader-b")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.id, id);
    let answer = serde_json::json!({"height": 7});
    requests::finish(&mut conn, id, Ok(&answer)).await.unwrap();
    let done = listener.recv().await.unwrap();
    assert_eq!(
        (done.channel(), done.payload()),
        (requests::DONE, id.to_string().as_str())
    );
    let read = requests::get(&mut conn, id).await.unwrap().unwrap();
    assert_eq!(read.answer, Some(Ok(answer)));
    // finished requests are not claimed again
    assert_eq!(
        requests::claim_next(&mut conn, "leader-c").await.unwrap(),
        None
    );
    let failed = requests::ask(&mut conn, Kind::Reconcile, &[])
        .await
        .unwrap();
    requests::finish(&mut conn, failed, Err("rpc failing"))
        .await
        .unwrap();
    assert_eq!(
        requests::get(&mut conn, failed)
            .await
            .unwrap()
            .unwrap()
            .answer,
        Some(Err("rpc failing".to_owned()))
    );
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn only_a_renewed_lease_with_a_session_is_a_live_leader(pool: PgPool) {
    use keywatch::store::lease;
    use std::time::Duration;
    let mut conn = pool.acquire().await.unwrap();
    let after = Duration::from_secs(10);
    assert_eq!(lease::live_holder(&mut conn, after).await.unwrap(), None);
    // a holder whose session is this very connection
    sqlx::query("set application_name = 'keywatch-test-holder'")
        .execute(&mut *conn)
        .await
        .unwrap();
    lease::take(&mut conn, "keywatch-test-holder", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        lease::live_holder(&mut conn, after).await.unwrap(),
        Some("keywatch-test-holder".to_owned())
    );
    // stale: not renewed for longer than takeover_after
    sqlx::query("update leader_lease set renewed_at = now() - interval '1 minute'")
        .execute(&mut *conn)
        .await
        .unwrap();
    assert_eq!(lease::live_holder(&mut conn, after).await.unwrap(), None);
    // renewed, but the holder's sessions are gone
    sqlx::query("update leader_lease set renewed_at = now(), holder = 'keywatch-gone'")
        .execute(&mut *conn)
        .await
        .unwrap();
    assert_eq!(lease::live_holder(&mut conn, after).await.unwrap(), None);
}

#[sqlx::test(migrations = false)]
async fn a_database_never_migrated_has_no_live_leader(pool: PgPool) {
    let mut conn = pool.acquire().await.unwrap();
    let after = std::time::Duration::from_secs(10);
    assert_eq!(
        keywatch::store::lease::live_holder(&mut conn, after)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        keywatch::store::lease::schema_version(&mut conn)
            .await
            .unwrap(),
        None
    );
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn unknown_changes_of_two_accounts_at_the_same_index_are_both_kept(pool: PgPool) {
    use keywatch::store::keys::{UnknownRow, insert_unknown_changes};
    let h = header(7);
    let (a, b) = (account("a.near"), account("b.near"));
    let hash = h.hash.to_string();
    // the same type at the same index for two accounts, and twice without one
    let rows: Vec<UnknownRow<'_>> = [Some(&a), Some(&b), None, None]
        .into_iter()
        .map(|account_id| UnknownRow {
            account_id,
            block_height: 7,
            block_hash: &hash,
            index_in_block: 0,
            change_type: "future_change",
            raw: serde_json::json!({"type": "future_change"}),
        })
        .collect();
    let mut tx = pool.begin().await.unwrap();
    store::insert_block(&mut tx, &h).await.unwrap();
    insert_unknown_changes(&mut tx, &rows).await.unwrap();
    // a replay adds nothing
    insert_unknown_changes(&mut tx, &rows).await.unwrap();
    tx.commit().await.unwrap();
    let kept: Vec<Option<String>> =
        sqlx::query_scalar("select account_id from unknown_changes order by account_id nulls last")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        kept,
        [Some("a.near".to_owned()), Some("b.near".to_owned()), None],
        "each account's change kept, one row for the same change without an account"
    );
}
