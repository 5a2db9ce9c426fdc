-- every alert names the change that caused it: its block (for a window rule
-- the block whose write it judged, before the deciding block_height) and
-- its transaction and receipt when known (new columns at the end: existing
-- queries of the view keep working)
create or replace view alert_log as
select a.id as alert_id, a.rule, a.severity, a.account_id, a.public_key, a.block_height,
       a.title, a.created_at, d.channel, d.status, d.attempts, d.last_error, d.delivered_at,
       coalesce((a.details->>'change_block_height')::bigint, a.block_height) as change_block_height,
       a.details->>'tx_hash' as tx_hash,
       a.details->>'receipt_hash' as receipt_hash
from alerts a
join alert_deliveries d on d.alert_id = a.id;
