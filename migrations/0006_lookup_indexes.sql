-- Version 6: indexes for the lookups the graph store makes per commit and per edit. DuckDB does
-- not use a composite primary key (commit_id, position) for `WHERE commit_id IN (...)`, so a
-- commit's parents, an edit's keys and a commit's changes were each a table scan (12-30 ms at
-- 100k rows, measured in docs/scaling.md).
CREATE INDEX commit_parents_commit ON commit_parents (commit_id);
CREATE INDEX edit_keys_edit ON edit_keys (edit_id);
CREATE INDEX commit_changes_commit ON commit_changes (commit_id);
