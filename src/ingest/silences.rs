//! Announcing silences: a silence (`keywatch silence`, or a row inserted by
//! any other means) takes effect only once the leader has announced it on
//! every channel, in the transaction that marks it announced, so nobody can
//! silence an account quietly.

use sqlx::PgPool;

use crate::config::Severity;
use crate::ingest::IngestError;
use crate::ingest::alerts::{AlertContext, cursor_block, queue};
use crate::notify::render::clean;
use crate::rules::AlertDraft;
use crate::rules::repeat::Repeat;
use crate::store;

/// Announces every silence not announced yet (at the cursor's block);
/// returns how many. Costs one indexed statement when there is none.
pub async fn announce_silences(pool: &PgPool, ctx: &AlertContext) -> Result<usize, IngestError> {
    if !store::silences::any_unannounced(pool).await? {
        return Ok(0);
    }
    let mut tx = pool.begin().await?;
    let new = store::silences::unannounced(&mut tx).await?;
    if new.is_empty() {
        return Ok(0);
    }
    let Some(cursor) = store::cursor(&mut *tx).await? else {
        return Ok(0);
    };
    let at = cursor_block(&cursor)?;
    // announced whatever `enabled` says: only the severity is configurable
    let severity = ctx
        .rules
        .get("silence_started")
        .map(|r| r.severity)
        .unwrap_or(Severity::Warning);
    let mut written = vec![];
    for s in &new {
        let what = match &s.rule {
            Some(rule) => format!("{rule} alerts"),
            None => "All alerts".to_owned(),
        };
        let draft = AlertDraft {
            rule: "silence_started",
            severity,
            account_id: s.account_id.clone(),
            public_key: None,
            title: format!(
                "{what} on {} are silenced until {}",
                s.account_id,
                s.ends_at.format("%Y-%m-%d %H:%M UTC")
            ),
            details: serde_json::json!({
                "account_id": s.account_id, "silence_id": s.id, "rule": s.rule,
                "until": s.ends_at, "reason": clean(&s.reason),
                "event": format!("silence {}", s.id),
            }),
        };
        written.extend(queue(&mut tx, ctx, &at, vec![(draft, Repeat::EveryChange)]).await?);
        store::silences::mark_announced(&mut tx, s.id).await?;
        tracing::warn!(
            silence = s.id,
            account = %s.account_id,
            rule = s.rule.as_deref().unwrap_or("all"),
            until = %s.ends_at,
            "silence announced"
        );
    }
    tx.commit().await?;
    crate::metrics::alerts_written(written.iter().map(String::as_str));
    Ok(new.len())
}
