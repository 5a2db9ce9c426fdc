//! `keywatch demo` as a newcomer runs it: the attack story ingested, every
//! alert mailed to the demo's own receiver and printed as received, the
//! three queries printed; and with `--keep`, a database every query of the
//! README's SQL cookbook answers.

use std::collections::BTreeSet;

use futures_util::FutureExt;
use sqlx::{PgPool, Row};

/// `keywatch demo` plus `args` as the README runs it: from the checkout,
/// with the shipped config (which has no channel) and no `KEYWATCH__`
/// override; `DATABASE_URL` names the tests' server.
fn demo_command(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_keywatch"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("demo")
        .args(args)
        .env("DATABASE_URL", std::env::var("DATABASE_URL").unwrap())
        .env("KEYWATCH_LOG", "warn")
        .kill_on_drop(true)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("KEYWATCH__")) {
        cmd.env_remove(k);
    }
    cmd
}

/// Runs [`demo_command`] to its end; its output.
async fn demo(args: &[&str]) -> String {
    let out = demo_command(args).output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The number before `what` in the demo's closing line.
fn count(text: &str, what: &str) -> usize {
    let done = text.lines().find(|l| l.starts_with("done: ")).unwrap();
    let at = done
        .find(what)
        .unwrap_or_else(|| panic!("{what} in {done}"));
    done[..at]
        .rsplit(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{done}"))
}

#[tokio::test]
async fn demo_mails_every_alert_to_its_receiver_and_prints_each_mail() {
    // the README's command itself: 600 ms blocks, about 20 s
    let text = demo(&[]).await;
    assert!(
        text.contains("block 1006  [CRITICAL] New full-access key on treasury.near"),
        "{text}"
    );
    assert_eq!(count(&text, "alerts"), 12, "{text}");
    assert_eq!(
        count(&text, "deliveries made"),
        12,
        "one per alert by email"
    );
    // every mail received is printed, and every critical alert has its own
    let headers: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("  mail ") && l.contains(" to you@localhost: "))
        .collect();
    assert_eq!(headers.len(), count(&text, "mails received"), "{text}");
    let criticals: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once("  [CRITICAL] ").map(|(_, title)| title))
        .collect();
    assert!(criticals.len() >= 7, "{text}");
    for title in &criticals {
        assert!(
            headers
                .iter()
                .any(|h| h.ends_with(&format!(": [CRITICAL] {title}"))),
            "no mail for {title}: {text}"
        );
    }
    // the story's 5 warnings stay under batch_after: one mail per alert
    assert_eq!(headers.len(), 12, "{text}");
    // the mail's own lines, decoded, under its subject
    let first = text
        .split("to you@localhost: [CRITICAL] New full-access key on treasury.near\n")
        .nth(1)
        .unwrap();
    assert!(
        first.starts_with("  | Account: treasury.near")
            && first.contains("  | Key: ed25519:GVyfcv74EyA6DNkQTap8k122oMnyjt6ufH7q3ger3EMq\n"),
        "{first}"
    );
    for (question, sql) in keywatch::cli::demo::QUERIES {
        assert!(text.contains(&format!("-- {question}\n{sql}")), "{text}");
    }
    let name = text
        .lines()
        .find_map(|l| l.strip_prefix("dropped the scratch database "))
        .and_then(|l| l.split(';').next())
        .unwrap()
        .to_owned();
    let pool = PgPool::connect(&std::env::var("DATABASE_URL").unwrap())
        .await
        .unwrap();
    let left: i64 = sqlx::query_scalar("select count(*) from pg_database where datname = $1")
        .bind(&name)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "{name} is dropped");
}

/// The SQL blocks of the README's cookbook, in order.
fn cookbook() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("### Cookbook")
        .expect("the README has a cookbook");
    let section = &readme[start..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    section
        .split("```sql\n")
        .skip(1)
        .map(|b| b.split("\n```").next().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn demo_keep_leaves_a_database_that_answers_every_cookbook_query() {
    let text = demo(&["--fast", "--keep"]).await;
    let url = text
        .lines()
        .find_map(|l| l.strip_prefix("kept the database: psql "))
        .unwrap_or_else(|| panic!("{text}"))
        .trim_matches('"');
    let mut kept = reqwest::Url::parse(url).unwrap();
    assert_eq!(kept.query(), None, "{url}");
    // the printed url has no password; the tests' server may need one
    let base = reqwest::Url::parse(&std::env::var("DATABASE_URL").unwrap()).unwrap();
    kept.set_password(base.password()).unwrap();
    let name = kept.path().trim_start_matches('/').to_owned();
    assert!(name.starts_with("keywatch_demo_"), "{name}");
    let checked = std::panic::AssertUnwindSafe(answers_every_cookbook_query(kept))
        .catch_unwind()
        .await;
    let admin = PgPool::connect(base.as_str()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "drop database {name} with (force)"
    )))
    .execute(&admin)
    .await
    .unwrap();
    if let Err(failed) = checked {
        std::panic::resume_unwind(failed);
    }
}

async fn answers_every_cookbook_query(kept: reqwest::Url) {
    let pool = PgPool::connect(kept.as_str()).await.unwrap();
    let queries = cookbook();
    assert_eq!(queries.len(), 7, "{queries:?}");
    for (i, (_, sql)) in keywatch::cli::demo::QUERIES.iter().enumerate() {
        assert_eq!(
            &queries[i], sql,
            "the cookbook opens with the demo's queries"
        );
    }
    let mut answers = vec![];
    for sql in &queries {
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .fetch_all(&pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert!(!rows.is_empty(), "no rows: {sql}");
        answers.push(rows);
    }
    // the keys at 1010: the original, the expected ops key (1003), the
    // attacker's key (1006) and gas key (1008)
    let keys: BTreeSet<String> = answers[0].iter().map(|r| r.get(0)).collect();
    let want: BTreeSet<String> = [
        "ed25519:2czEoxvpiTZ8isg5dwfw1hbUyxUVALZSuhBAhd6BVAMx",
        "ed25519:8FtSP48gqecdyqsH2Xinz5tvneUKJv1i9k77AVNReiB6",
        "ed25519:GVyfcv74EyA6DNkQTap8k122oMnyjt6ufH7q3ger3EMq",
        "ed25519:8GGzH1ySaUbbLGnLwhn1myU3xbQKiYcjJJ9LHTVrMBGK",
    ]
    .map(String::from)
    .into();
    assert_eq!(keys, want);
    // the added full-access keys, newest first: the gas key, then the attacker's
    let added: Vec<String> = answers[1].iter().map(|r| r.get(1)).collect();
    assert_eq!(
        added[..2],
        [
            "ed25519:8GGzH1ySaUbbLGnLwhn1myU3xbQKiYcjJJ9LHTVrMBGK",
            "ed25519:GVyfcv74EyA6DNkQTap8k122oMnyjt6ufH7q3ger3EMq"
        ]
    );
    // every alert, delivered by email
    let statuses: Vec<(String, String)> = answers[2]
        .iter()
        .map(|r| (r.get("channel"), r.get("status")))
        .collect();
    assert_eq!(statuses.len(), 12);
    assert!(
        statuses
            .iter()
            .all(|(c, s)| c == "email" && s == "delivered"),
        "{statuses:?}"
    );
    // the relayer's allowance: 1 NEAR at baseline, then charged and refunded
    assert!(
        answers[4].len() >= 9,
        "baseline plus 4 charges and 4 refunds"
    );
    pool.close().await;
}

#[tokio::test]
async fn an_interrupted_demo_still_drops_its_database() {
    use tokio::io::AsyncBufReadExt;
    // 600 ms blocks: the story takes about 20 s, time enough to interrupt it
    let mut child = demo_command(&[]).spawn().unwrap();
    let name = format!("keywatch_demo_{}", child.id().unwrap());
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next_line().await.unwrap();
        let line = line.unwrap_or_else(|| panic!("the demo ended before it watched anything"));
        if line.starts_with("watching treasury.near") {
            break;
        }
    }
    let pool = PgPool::connect(&std::env::var("DATABASE_URL").unwrap())
        .await
        .unwrap();
    let exists = || async {
        sqlx::query_scalar::<_, bool>(
            "select exists (select 1 from pg_database where datname = $1)",
        )
        .bind(&name)
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    assert!(exists().await, "{name} exists while the demo runs");
    crate::support::signal(child.id().unwrap(), "INT");
    let mut rest = String::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        rest.push_str(&line);
        rest.push('\n');
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the demo stops after the current block")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // a clean stop: exit 0, as for run
    assert_eq!(out.status.code(), Some(0), "{rest}\n{stderr}");
    assert!(
        rest.contains("\ninterrupted\n") && rest.contains("dropped the scratch database"),
        "{rest}"
    );
    assert!(!exists().await, "{name} is dropped");
}
