-- the watch list. the database is the truth: config [[accounts]] entries are
-- upserted here at start, `keywatch watch add/remove` edit it while running.
create table watched_accounts (
    account_id     text primary key,
    label          text,
    expected_keys  text[] not null default '{}',
    cold_keys      text[] not null default '{}',
    -- per-account rule overrides, as validated from the config
    rule_overrides jsonb not null default '{}',
    -- true when the account did not exist when it was added (--allow-missing)
    allow_missing  boolean not null default false,
    -- where tracking started: the block whose state the baseline was read at.
    -- null while no cursor exists yet: the follower reads the baseline when it
    -- sets the first cursor, in the same transaction.
    baseline_height bigint,
    baseline_hash   text,
    added_at        timestamptz not null default now(),
    constraint watched_accounts_baseline_both check ((baseline_height is null) = (baseline_hash is null))
);

-- tracking periods, so "keys at height H" never answers from a period in
-- which the account was not watched (removed, then added again later).
create table tracking_spans (
    account_id  text not null,
    from_height bigint not null,
    -- null while still tracked; otherwise the last height covered
    to_height   bigint,
    constraint tracking_spans_pkey primary key (account_id, from_height),
    constraint tracking_spans_order check (to_height is null or to_height >= from_height)
);
