-- unknown changes of two watched accounts in one block may share a type and
-- an index (indexes count within each account's changes): the account is
-- part of their natural key. an unknown change without an account (null)
-- still has one row per (block, type, index).
alter table unknown_changes drop constraint unknown_changes_natural_key;
alter table unknown_changes add constraint unknown_changes_natural_key
    unique nulls not distinct (block_hash, account_id, change_type, index_in_block);
