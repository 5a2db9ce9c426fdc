-- the last alert of a rule: a new leader looks for an ingest_stalled a
-- former leader raised and never closed.
create index alerts_rule on alerts (rule, id);
