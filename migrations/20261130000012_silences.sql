-- planned changes without noise: while a silence is active, alerts for its
-- account (and rule, when one is named) are decided and recorded with
-- status 'silenced', not sent. a silence takes effect only once the leader
-- has announced it on every channel (announced_at), so a silence inserted
-- by hand, by someone with database access, is never quiet.
create table silences (
    id           bigserial primary key,
    account_id   text not null,
    rule         text,
    starts_at    timestamptz not null default now(),
    ends_at      timestamptz not null,
    reason       text not null,
    announced_at timestamptz,
    constraint silences_span check (ends_at > starts_at)
);

create index silences_active on silences (account_id, ends_at);

-- a silence is announced by the leader, never born announced: whoever
-- inserts one (the cli, or plain sql) cannot skip the announcement
create function silences_unannounced() returns trigger language plpgsql as $$
begin
    new.announced_at := null;
    return new;
end;
$$;

create trigger silences_unannounced before insert on silences
    for each row execute function silences_unannounced();
create index silences_unannounced on silences (id) where announced_at is null;

alter table alert_deliveries drop constraint alert_deliveries_status;
alter table alert_deliveries add constraint alert_deliveries_status
    check (status in ('pending', 'delivered', 'failed', 'suppressed', 'silenced'));
