-- one leader, any number of standbys. the leader renews renewed_at every
-- second or two; a standby that finds it older than [ingest] takeover_after
-- ends the holder's sessions (application_name = holder) and takes over
-- with epoch + 1. every block's transaction checks the epoch (fencing), so
-- a deposed leader that wakes up cannot write another block.
create table leader_lease (
    id          integer primary key default 1,
    holder      text not null,
    epoch       bigint not null,
    renewed_at  timestamptz not null,
    constraint leader_lease_single_row check (id = 1)
);
