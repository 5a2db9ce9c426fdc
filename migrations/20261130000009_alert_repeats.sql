-- when a rule fires again (see "Dedup, cooldown and escalation" in the
-- readme): an alert decided for an old block and never sent (suppressed)
-- starts no cooldown, so it is marked on the alert itself.
alter table alerts add column suppressed boolean not null default false;

update alerts a set suppressed = true
where exists (select 1 from alert_deliveries d where d.alert_id = a.id)
  and not exists (select 1 from alert_deliveries d
                  where d.alert_id = a.id and d.status <> 'suppressed');

-- the last alert of a rule for an account and key: one probe per question
create index alerts_last_of_rule on alerts (account_id, rule, (coalesce(public_key, '')), block_time desc, id desc)
    where not suppressed;

-- when the follower last corrected an account's drift: the same difference
-- found again after that is news again
alter table watched_accounts add column drift_fixed_at timestamptz;
