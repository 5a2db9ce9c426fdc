-- what the leader last knew, written with every lease renewal, so
-- `keywatch status` from any host says whether keywatch is ready and why
-- not, the way the leader's /ready would.
alter table leader_lease add column final_head bigint;
alter table leader_lease add column not_ready text[] not null default '{}';
