-- a counter bumped by every change to watched_accounts, whoever makes it
-- (the cli, the follower's baselines, or plain sql): the follower keeps the
-- watched set in memory and reads only this number per transaction,
-- reloading the set when it moved.
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

create trigger watched_accounts_changed
    after insert or update or delete or truncate on watched_accounts
    for each statement execute function bump_watch_list_version();
