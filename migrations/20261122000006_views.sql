-- the stable sql surface (see README "Querying history in SQL"). tables may
-- change between versions; these views keep their columns.

create view key_history as
select e.account_id, e.public_key, e.block_height, e.block_hash, b.block_time,
       b.block_timestamp_ns, e.index_in_block, e.action, e.permission, e.permission_raw,
       e.allowance, e.gas_key_balance, e.receiver_id, e.method_names, e.nonce,
       e.nonce_index, e.num_nonces, e.cause, e.tx_hash, e.receipt_hash, e.source
from key_events e
join blocks b on b.block_hash = e.block_hash;

-- keys of accounts that are watched now; a removed account's state is not
-- current any more (its history stays in key_history)
create view current_keys as
select k.account_id, k.public_key, k.permission, k.permission_raw, k.allowance,
       k.gas_key_balance, k.receiver_id, k.method_names, k.nonce, k.num_nonces,
       k.added_at_height, k.updated_at_height
from key_state k
join watched_accounts w on w.account_id = k.account_id;

create view balance_history as
select e.account_id, e.block_height, e.block_hash, b.block_time, b.block_timestamp_ns,
       e.index_in_block, e.amount, e.locked, e.storage_usage, e.code_hash,
       e.global_contract_hash, e.global_contract_account_id, e.deleted, e.cause,
       e.tx_hash, e.receipt_hash, e.source
from balance_events e
join blocks b on b.block_hash = e.block_hash;

create view alert_log as
select a.id as alert_id, a.rule, a.severity, a.account_id, a.public_key, a.block_height,
       a.title, a.created_at, d.channel, d.status, d.attempts, d.last_error, d.delivered_at
from alerts a
join alert_deliveries d on d.alert_id = a.id;
