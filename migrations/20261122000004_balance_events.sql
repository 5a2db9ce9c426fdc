-- every account_update / account_deletion of a watched account, plus the
-- baseline read and reconcile corrections.
create table balance_events (
    id                         bigserial primary key,
    account_id                 text not null,
    block_height               bigint not null,
    block_hash                 text not null references blocks (block_hash),
    index_in_block             integer not null,
    amount                     numeric(39, 0),
    locked                     numeric(39, 0),
    storage_usage              bigint,
    code_hash                  text,
    global_contract_hash       text,
    global_contract_account_id text,
    deleted                    boolean not null default false,
    cause                      text,
    tx_hash                    text,
    receipt_hash               text,
    source                     text not null,
    recorded_at                timestamptz not null default now(),
    constraint balance_events_natural_key unique (account_id, block_hash, source, index_in_block),
    constraint balance_events_source check (source in ('chain', 'baseline', 'reconcile')),
    -- a deletion row carries no balance; every other row carries all of it
    constraint balance_events_shape check (deleted or (amount is not null and locked is not null
        and storage_usage is not null and code_hash is not null))
);

create index balance_events_account_height on balance_events (account_id, block_height, index_in_block);

-- end-of-block state of each watched account
create table current_accounts (
    account_id                 text primary key,
    amount                     numeric(39, 0),
    locked                     numeric(39, 0),
    storage_usage              bigint,
    code_hash                  text,
    global_contract_hash       text,
    global_contract_account_id text,
    deleted                    boolean not null default false,
    updated_at_height          bigint not null
);

-- change types this version does not know, kept whole rather than dropped
create table unknown_changes (
    id             bigserial primary key,
    account_id     text,
    block_height   bigint not null,
    block_hash     text not null references blocks (block_hash),
    index_in_block integer not null,
    change_type    text not null,
    raw            jsonb not null,
    constraint unknown_changes_natural_key unique (block_hash, change_type, index_in_block)
);
