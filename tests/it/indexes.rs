//! Every read of history is served by an index: a million history rows in
//! the shape a year of following produces (many quiet accounts, a few keys
//! and accounts written every block, a gas key with many nonce writes),
//! `ANALYZE`d, then each of the store's own statements is `PREPARE`d and
//! `EXPLAIN (ANALYZE, BUFFERS) EXECUTE`d with custom and generic plans.
//! None may scan `key_events`, `balance_events` or `blocks` sequentially,
//! and the buffers each touches stay within a small budget that does not
//! depend on how much history there is.

use keywatch::store;
use serde_json::Value;
use sqlx::PgPool;

const BLOCKS: i64 = 150_000;
const TS0: i64 = 1_795_331_870_000_000_000;
const BLOCK_NS: i64 = 600_000_000;

/// Loads the history: ~1.0M event rows over 150,000 blocks.
async fn load(pool: &PgPool) -> (i64, i64) {
    let statements = [
        format!(
            "insert into blocks (block_hash, block_height, prev_hash, block_timestamp_ns, block_time)
             select 'h' || h, h, 'h' || (h - 1), {TS0} + h * {BLOCK_NS},
                    to_timestamp(({TS0} + h * {BLOCK_NS}) / 1e9)
             from generate_series(1::bigint, {BLOCKS}) h"
        ),
        // 2,000 watched accounts, tracked since block 1
        "insert into watched_accounts (account_id, baseline_height, baseline_hash)
         select 'acc' || a || '.near', 1, 'h1' from generate_series(0, 1999) a"
            .to_owned(),
        "insert into tracking_spans (account_id, from_height)
         select 'acc' || a || '.near', 1 from generate_series(0, 1999) a"
            .to_owned(),
        // two relayer keys written every block (added at 1, then charged)
        format!(
            "insert into key_events (account_id, public_key, block_height, block_hash, index_in_block,
                                     action, permission, permission_raw, allowance, nonce, source)
             select 'acc' || k || '.near', 'ed25519:busy' || k, h, 'h' || h, 0,
                    case when h = 1 then 'added' else 'updated' end, 'function_call',
                    '{{\"FunctionCall\": {{\"allowance\": \"1\", \"receiver_id\": \"r.near\", \"method_names\": []}}}}',
                    10::numeric ^ 24 - h, h, 'chain'
             from generate_series(0, 1) k, generate_series(1, {BLOCKS}) h"
        ),
        // a gas key with a nonce write every third block
        format!(
            "insert into key_events (account_id, public_key, block_height, block_hash, index_in_block,
                                     action, nonce, nonce_index, source)
             select 'acc2.near', 'ed25519:gas', h, 'h' || h, 1, 'nonce_slot', h, 0, 'chain'
             from generate_series(3, {BLOCKS}, 3) h"
        ),
        // 2,000 accounts x 5 keys x 28 writes, spread over the whole range
        "insert into key_events (account_id, public_key, block_height, block_hash, index_in_block,
                                     action, permission, permission_raw, allowance, nonce, source)
             select 'acc' || a || '.near', 'ed25519:k' || k, h, 'h' || h, 2 + k,
                    case when n = 0 then 'added' else 'updated' end, 'function_call',
                    '{\"FunctionCall\": {\"allowance\": \"1\", \"receiver_id\": \"r.near\", \"method_names\": []}}',
                    10::numeric ^ 24 - n, n, 'chain'
             from generate_series(0, 1999) a, generate_series(0, 4) k, generate_series(0, 27) n,
                  lateral (select 1 + ((a * 7 + k * 13) % 5000) + n * 5300 as h) p"
            .to_owned(),
        // two hot wallets with a balance write every block
        format!(
            "insert into balance_events (account_id, block_height, block_hash, index_in_block, amount,
                                         locked, storage_usage, code_hash, source)
             select 'acc' || a || '.near', h, 'h' || h, 0, 10::numeric ^ 30 - h, 0, 100,
                    '11111111111111111111111111111111', 'chain'
             from generate_series(0, 1) a, generate_series(1, {BLOCKS}) h"
        ),
        // every account's balance moving now and then
        "insert into balance_events (account_id, block_height, block_hash, index_in_block, amount,
                                         locked, storage_usage, code_hash, source)
             select 'acc' || a || '.near', h, 'h' || h, 1, 10::numeric ^ 30 - n, 0, 100,
                    '11111111111111111111111111111111', 'chain'
             from generate_series(0, 1999) a, generate_series(0, 39) n,
                  lateral (select 1 + ((a * 11) % 3000) + n * 3700 as h) p"
            .to_owned(),
        "analyze".to_owned(),
    ];
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("set synchronous_commit = off")
        .execute(&mut *conn)
        .await
        .unwrap();
    for s in statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(s))
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    let keys: i64 = sqlx::query_scalar("select count(*) from key_events")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let balances: i64 = sqlx::query_scalar("select count(*) from balance_events")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    (keys, balances)
}

/// The arguments each statement is explained with (SQL literals): the
/// busiest key or account where there is one, since that is where a missing
/// index costs most.
fn args(name: &str) -> Vec<String> {
    let mid_ts = (TS0 + 100_000 * BLOCK_NS).to_string();
    let starts3 = format!("array[{mid_ts}, {mid_ts}, {mid_ts}]::bigint[]");
    let starts2 = format!("array[{mid_ts}, {mid_ts}]::bigint[]");
    let args: &[&str] = match name {
        "window::SETTLED_BLOCK" | "window::BLOCKS_UP_TO" => &["120000", "3"],
        "window::KEYS_WRITTEN_AT" | "window::ACCOUNTS_WRITTEN_AT" | "replay::ACCOUNTS_IN_BLOCK" => {
            &["120000"]
        }
        "window::KEYS_IN_WINDOW" => &[
            "array['acc0.near', 'acc1.near', 'acc2.near']",
            "array['ed25519:busy0', 'ed25519:busy1', 'ed25519:k1']",
            &starts3,
            "120010",
            "120000",
        ],
        "window::BALANCES_IN_WINDOW" => &[
            "array['acc0.near', 'acc1.near']",
            &starts2,
            "120010",
            "120000",
        ],
        "keys::KEYS_AT" => &["'acc2.near'", "1", "120000"],
        "history::ACCOUNT_AT" => &["'acc0.near'", "1", "120000"],
        "history::HISTORY_KEYS" | "history::HISTORY_BALANCES" => &["'acc500.near'"],
        "replay::BLOCKS_BETWEEN" => &["120000", "120010"],
        "replay::KEY_WRITES_IN_BLOCK"
        | "replay::BALANCE_WRITES_IN_BLOCK"
        | "replay::UNKNOWN_IN_BLOCK" => &["'acc0.near'", "'h120000'"],
        other => panic!("{other} is a history read with no arguments in this test: add them"),
    };
    args.iter().map(|a| a.to_string()).collect()
}

/// The buffers a statement may touch. `history` reads every row of one
/// (quiet) account, the rest a handful of index pages.
fn budget(name: &str) -> u64 {
    if name.starts_with("history::HISTORY") {
        2_000
    } else {
        200
    }
}

/// Sequential scans of the history tables and `blocks` in this transaction
/// (not of `unknown_changes`, empty here, which the planner rightly scans).
async fn seq_scans_now(conn: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "select coalesce(sum(seq_scan), 0)::bigint from pg_stat_xact_user_tables
         where relname in ('key_events', 'balance_events', 'blocks')",
    )
    .fetch_one(conn)
    .await
    .unwrap()
}

fn seq_scans(plan: &Value, out: &mut Vec<String>) {
    if plan["Node Type"] == "Seq Scan" {
        out.push(plan["Relation Name"].as_str().unwrap_or("?").to_owned());
    }
    for child in plan["Plans"].as_array().into_iter().flatten() {
        seq_scans(child, out);
    }
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn every_history_read_is_served_by_an_index(pool: PgPool) {
    let started = std::time::Instant::now();
    let (keys, balances) = load(&pool).await;
    eprintln!(
        "loaded {keys} key rows and {balances} balance rows in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(keys + balances >= 1_000_000, "{keys} + {balances}");
    let mut conn = pool.acquire().await.unwrap();
    let mut failures = Vec::new();
    for (i, (name, sql)) in store::HISTORY_READS.iter().enumerate() {
        let args = args(name).join(", ");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("prepare s{i} as {sql}")))
            .execute(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for mode in ["force_custom_plan", "force_generic_plan"] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("set plan_cache_mode = {mode}")))
                .execute(&mut *conn)
                .await
                .unwrap();
            let explained: Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "explain (analyze, buffers, format json) execute s{i}({args})"
            )))
            .fetch_one(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            let plan = &explained[0]["Plan"];
            let mut scans = Vec::new();
            seq_scans(plan, &mut scans);
            scans.retain(|r| ["key_events", "balance_events", "blocks"].contains(&r.as_str()));
            let buffers = plan["Shared Hit Blocks"].as_u64().unwrap_or(0)
                + plan["Shared Read Blocks"].as_u64().unwrap_or(0);
            eprintln!(
                "{name:32} {mode:18} {buffers:6} buffers {:8.3} ms",
                explained[0]["Execution Time"].as_f64().unwrap_or(-1.0)
            );
            if !scans.is_empty() || buffers > budget(name) {
                failures.push(format!(
                    "{name} ({mode}): sequential scans of {scans:?}, {buffers} buffers (budget {})\n{}",
                    budget(name),
                    serde_json::to_string_pretty(plan).unwrap()
                ));
            }
        }
    }
    // Retention's pruning pass, rolled back: over 2,000 quiet blocks above
    // the history it deletes all but the 128 after the last write, each
    // block's tests (its own and the foreign keys' on delete) probing an
    // index, never scanning a history table.
    sqlx::raw_sql("begin").execute(&mut *conn).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "insert into blocks (block_hash, block_height, prev_hash, block_timestamp_ns, block_time)
         select 'h' || h, h, 'h' || (h - 1), {TS0} + h * {BLOCK_NS},
                to_timestamp(({TS0} + h * {BLOCK_NS}) / 1e9)
         from generate_series({}::bigint, {}) h",
        BLOCKS + 1,
        BLOCKS + 2_000
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
    let before = seq_scans_now(&mut conn).await;
    let started = std::time::Instant::now();
    let deleted = sqlx::query(store::prune::PRUNE_BLOCKS)
        .bind(BLOCKS + 1)
        .bind(BLOCKS + 2_001)
        .bind(128i64)
        .execute(&mut *conn)
        .await
        .unwrap()
        .rows_affected();
    let took = started.elapsed();
    let scans = seq_scans_now(&mut conn).await - before;
    sqlx::raw_sql("rollback").execute(&mut *conn).await.unwrap();
    eprintln!(
        "prune::PRUNE_BLOCKS deleted {deleted} of 2,000 quiet blocks in {:.1} ms, {scans} sequential scans",
        took.as_secs_f64() * 1e3
    );
    assert_eq!(deleted, 2_000 - 128, "all but the 128 after the last write");
    if scans > 0 {
        failures.push(format!(
            "prune::PRUNE_BLOCKS: {scans} sequential scans of history or blocks"
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
