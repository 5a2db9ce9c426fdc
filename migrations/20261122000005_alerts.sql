-- the alert outbox: alerts are inserted in the ingest transaction of the
-- block that decided them; deliveries are sent afterwards by the dispatcher.
create table alerts (
    id           bigserial primary key,
    -- (rule, account, key or '', deciding block hash): a replayed block
    -- produces the same key and therefore no second alert
    dedup_key    text not null,
    rule         text not null,
    severity     text not null,
    account_id   text not null,
    public_key   text,
    block_height bigint not null,
    block_hash   text not null,
    block_time   timestamptz not null,
    title        text not null,
    details      jsonb not null default '{}',
    created_at   timestamptz not null default now(),
    constraint alerts_dedup_key unique (dedup_key),
    constraint alerts_severity check (severity in ('critical', 'warning', 'info'))
);

create index alerts_account on alerts (account_id, block_height);

create table alert_deliveries (
    id              bigserial primary key,
    alert_id        bigint not null references alerts (id) on delete cascade,
    channel         text not null,
    status          text not null default 'pending',
    attempts        integer not null default 0,
    last_error      text,
    next_attempt_at timestamptz not null default now(),
    delivered_at    timestamptz,
    -- the batch message this alert went out in, when batched
    batch_id        text,
    constraint alert_deliveries_alert_channel unique (alert_id, channel),
    constraint alert_deliveries_status check (status in ('pending', 'delivered', 'failed', 'suppressed'))
);

create index alert_deliveries_pending on alert_deliveries (next_attempt_at) where status = 'pending';

-- every attempt, for the audit trail (pruned by retention, unlike history)
create table delivery_attempts (
    id           bigserial primary key,
    delivery_id  bigint not null references alert_deliveries (id) on delete cascade,
    attempted_at timestamptz not null default now(),
    outcome      text not null,
    error        text,
    constraint delivery_attempts_outcome check (outcome in ('delivered', 'transient', 'permanent'))
);
