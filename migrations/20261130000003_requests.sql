-- work another process asks the running leader to do, so that it runs on
-- the request budget following leaves and never races the follower. the
-- asker listens on keywatch_request_done before inserting a row here; the
-- leader hears keywatch_request, claims the row, runs it and notifies.
-- a row claimed by a leader that then lost its lease is claimed again by
-- the next one.
create table requests (
    id           bigserial primary key,
    kind         text not null check (kind in ('reconcile')),
    accounts     text[] not null,
    requested_at timestamptz not null default now(),
    claimed_by   text,
    claimed_at   timestamptz,
    finished_at  timestamptz,
    outcome      jsonb,
    error        text,
    constraint requests_finished_with_answer
        check (finished_at is null or (outcome is null) <> (error is null))
);

create index requests_open on requests (id) where finished_at is null;
