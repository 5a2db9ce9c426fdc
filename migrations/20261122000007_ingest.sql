-- a balance row that changed the account's contract: a new code_hash or a
-- global contract set. computed at ingest against the state just before
-- the write, so rules and sql need not compare rows.
alter table balance_events add column contract_changed boolean not null default false;

-- history the rpc could no longer serve, skipped with `run --accept-gap`.
-- heights from_height..=to_height were not ingested; baselines were re-read
-- at to_height + 1's parent (rows with source = 'reconcile').
create table ingest_gaps (
    id          bigserial primary key,
    from_height bigint not null,
    to_height   bigint not null,
    recorded_at timestamptz not null default now(),
    constraint ingest_gaps_order check (to_height >= from_height)
);

-- each reconcile run and what it found, for the audit trail
create table reconcile_runs (
    id           bigserial primary key,
    block_height bigint not null,
    block_hash   text not null,
    accounts     integer not null,
    differences  integer not null,
    ran_at       timestamptz not null default now()
);
