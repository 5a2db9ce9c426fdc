-- running for months: delivery escalation, corrections the follower applies
-- between two blocks, and late alerts from a catch-up.

-- set once a delivery_failing alert has been raised for this delivery (it
-- ended `failed`, or stayed pending as a critical alert for too long), so
-- each stuck delivery is escalated once.
alter table alert_deliveries add column escalated boolean not null default false;

-- the escalation check reads only deliveries that may still need it
create index alert_deliveries_unescalated on alert_deliveries (alert_id)
    where not escalated and status in ('pending', 'failed');

-- a reconcile found a difference at a height below the cursor: the follower
-- re-reads the account at its cursor between two blocks and writes the
-- correction (reconcile rows), then clears this.
alter table watched_accounts add column fix_requested_at timestamptz;

-- /ready reports deliveries that ended `failed` (recently) until resolved
create index alert_deliveries_failed on alert_deliveries (alert_id) where status = 'failed';

-- true from a first start at a past height until the follower first reaches
-- the head: alerts for blocks older than notify.max_age are suppressed then
-- (a backfill), but not in a catch-up after downtime. kept here so a
-- restart in the middle of a backfill still suppresses.
alter table ingest_cursor add column from_history boolean not null default false;
