-- Version 5: the ref log is a hash chain, so history cannot be quietly rewritten.
--
-- * `reflog.kind`: what the move made the ref (branch | tag), so "tags never move" is checked
--   from the log itself, not only from the `refs` row a writer could edit.
-- * `reflog.prev_hash`: the `entry_hash` of the entry before it in id order, all refs together
--   (NULL for the first entry).
-- * `reflog.entry_hash`: sha256 of the entry's canonical record {format, registry (the init
--   commit's id), prev, id, ref, kind, old, new, actor, time, reason} (registry/model.py).
--   `sola verify` recomputes every link; a checkpoint (`sola checkpoint`) records the head hash
--   and length, and `sola verify --checkpoint` proves the log still extends it.
-- Back-filled for existing entries, in id order, by registry/catalog/duckdb.py
-- (`backfill_reflog_chain`), inside this migration's transaction.
ALTER TABLE reflog ADD COLUMN kind VARCHAR;
ALTER TABLE reflog ADD COLUMN prev_hash VARCHAR;
ALTER TABLE reflog ADD COLUMN entry_hash VARCHAR;
