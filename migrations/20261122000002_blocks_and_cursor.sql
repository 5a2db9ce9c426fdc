-- processed blocks. heights are not dense on NEAR (skipped heights), so
-- continuity is prev_hash, never height + 1.
create table blocks (
    block_hash         text primary key,
    block_height       bigint not null,
    prev_hash          text not null,
    -- exact nanoseconds; block_time is the same instant at microsecond precision
    block_timestamp_ns bigint not null,
    block_time         timestamptz not null,
    constraint blocks_height_key unique (block_height)
);

-- the last committed block. one row; advanced in the same transaction as the
-- block's events, and only forward.
create table ingest_cursor (
    id           smallint primary key default 1,
    block_height bigint not null,
    block_hash   text not null references blocks (block_hash),
    updated_at   timestamptz not null default now(),
    constraint ingest_cursor_single_row check (id = 1)
);
