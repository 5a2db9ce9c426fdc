-- every write of every access key of a watched account, in order, plus the
-- keys found at baseline and corrections found by reconcile.
create table key_events (
    id                 bigserial primary key,
    account_id         text not null,
    public_key         text not null,
    block_height       bigint not null,
    block_hash         text not null references blocks (block_hash),
    -- position among this account's key writes in the block (response order)
    index_in_block     integer not null,
    action             text not null,
    permission         text,
    permission_raw     jsonb,
    allowance          numeric(39, 0),
    gas_key_balance    numeric(39, 0),
    receiver_id        text,
    method_names       text[],
    num_nonces         integer,
    -- u64 on chain: numeric so no value can overflow a signed bigint
    nonce              numeric(20, 0),
    -- gas_key_nonce_update: which nonce slot
    nonce_index        integer,
    cause              text,
    tx_hash            text,
    receipt_hash       text,
    source             text not null,
    -- true when the key was removed by its account's deletion
    by_account_deletion boolean not null default false,
    recorded_at        timestamptz not null default now(),
    constraint key_events_natural_key unique (account_id, block_hash, source, index_in_block),
    constraint key_events_action check (action in ('added', 'updated', 'deleted', 'nonce_slot')),
    constraint key_events_permission check (permission is null or permission in
        ('full_access', 'function_call', 'gas_key_full_access', 'gas_key_function_call', 'unknown')),
    constraint key_events_source check (source in ('chain', 'baseline', 'reconcile')),
    constraint key_events_permission_present check ((action in ('added', 'updated')) = (permission is not null))
);

create index key_events_account_key_height on key_events (account_id, public_key, block_height, index_in_block);
create index key_events_height on key_events (block_height);

-- the end-of-block state of every key that exists now (read through the
-- current_keys view)
create table key_state (
    account_id       text not null,
    public_key       text not null,
    permission       text not null,
    permission_raw   jsonb not null,
    allowance        numeric(39, 0),
    gas_key_balance  numeric(39, 0),
    receiver_id      text,
    method_names     text[],
    num_nonces       integer,
    nonce            numeric(20, 0) not null,
    added_at_height  bigint not null,
    updated_at_height bigint not null,
    constraint key_state_pkey primary key (account_id, public_key)
);
