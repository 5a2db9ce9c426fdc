-- every read of history that the follower, the rules, `keys --at`,
-- `history` and `rules test` make is served by an index, so its cost does
-- not grow with months of history.

-- within one block a baseline or reconcile row states the end of the
-- block, so it ranks above the block's chain writes; indexes order by it.
alter table key_events add column source_rank smallint not null generated always as
    (case source when 'chain' then 0 when 'baseline' then 1 else 2 end) stored;
alter table balance_events add column source_rank smallint not null generated always as
    (case source when 'chain' then 0 when 'baseline' then 1 else 2 end) stored;

-- a key's last write at or before a height (keys --at, allowance_drain)
create index key_events_key_writes on key_events
    (account_id, public_key, block_height, source_rank, index_in_block)
    where action <> 'nonce_slot';
-- the last time a key was added (a drain's window starts there at the earliest)
create index key_events_key_added on key_events (account_id, public_key, block_height)
    where action = 'added';
-- an account's balance at or before a height (balance_drop, reconcile)
create index balance_events_account_order on balance_events
    (account_id, block_height, source_rank, index_in_block);
drop index balance_events_account_height;
-- the accounts one block wrote to (window rules, rules test)
create index balance_events_height on balance_events (block_height);
-- the last block at or before a time (a window's start)
create index blocks_timestamp on blocks (block_timestamp_ns);
