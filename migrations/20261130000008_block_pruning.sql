-- `blocks` gets a row for every block followed (~144,000 a day on mainnet),
-- but history needs only the blocks its rows sit in and the few after them
-- that rules settle on (see src/store/prune.rs). retention deletes the rest
-- once old; this row remembers how far it got, so a pass starts where the
-- last one ended instead of probing a year of kept blocks again.
create table block_pruning (
    id           smallint primary key default 1,
    pruned_below bigint not null default 0,
    constraint block_pruning_single_row check (id = 1)
);

insert into block_pruning (id, pruned_below) values (1, 0);

-- pruning asks whether any unknown change sits at or just before a height
create index unknown_changes_height on unknown_changes (block_height);

-- deleting a block makes postgres check that no history row references it
-- (the foreign keys on block_hash): without these indexes that check is a
-- sequential scan of the history table for every block deleted.
-- (unknown_changes' natural key already starts with block_hash.)
create index key_events_block_hash on key_events (block_hash);
create index balance_events_block_hash on balance_events (block_hash);
