-- a counter bumped by every change to which accounts watched_accounts
-- tracks, whoever makes it (the cli, the follower's baselines, or plain
-- sql): the follower keeps the tracked set in memory and reads only this
-- number per transaction, reloading the set when it moved. labels, key
-- lists and fix requests do not move it (the set does not depend on them).
create table watch_list_version (
    id      smallint primary key default 1,
    version bigint not null default 0,
    constraint watch_list_version_single_row check (id = 1)
);

insert into watch_list_version (id, version) values (1, 0);

create function bump_watch_list_version() returns trigger language plpgsql as $$
begin
    update watch_list_version set version = version + 1 where id = 1;
    return null;
end;
$$;

create trigger watched_accounts_added_or_removed
    after insert or delete or truncate on watched_accounts
    for each statement execute function bump_watch_list_version();

-- tracking starts when the baseline is written
create trigger watched_accounts_baseline_changed
    after update of account_id, baseline_height on watched_accounts
    for each row
    when (old.account_id is distinct from new.account_id
          or old.baseline_height is distinct from new.baseline_height)
    execute function bump_watch_list_version();
