-- Version 4: history is a graph of commits over materialised trees (edit sets).
--
-- * `commit_parents`: every parent of a commit, in order (0 for init, 1 usually, 2 for a merge);
--   `commits.parent_id` keeps the first parent. `commits.seq` stays as this registry's write
--   order only: ancestry follows parents, never seq.
-- * `commits.format`: 1 for commits hashed before edit sets (their record includes seq), 2 after.
-- * `commit_changes.state`: the state the change gives the edit, relative to the commit's first
--   parent: 'active', 'tombstone' (revoked, its keys still route to the base model) or 'absent'.
--   Back-filled for older commits from the tombstone rule they were written under.
-- * `trees` + `tree_members`: each tree's content as a skip-delta against its base tree (the
--   members whose state differs from the base, 'absent' included); the empty tree has no rows.
--   A tree's id is the additive set hash of its content (registry/model.py) and is checked by
--   `sola verify`. Back-filled by replaying the old line once (registry/store.py).
-- * ref log entries may record a deleted branch (new_commit NULL).
-- * `protections` and `reviews`: append-only governance records (latest protection row wins).
ALTER TABLE commits ADD COLUMN format INTEGER DEFAULT 1;
CREATE TABLE commit_parents (
    commit_id VARCHAR NOT NULL,
    position  INTEGER NOT NULL,
    parent_id VARCHAR NOT NULL,
    PRIMARY KEY (commit_id, position)
);
CREATE INDEX commit_parents_parent ON commit_parents (parent_id);
ALTER TABLE commit_changes ADD COLUMN state VARCHAR;
CREATE TABLE trees (
    tree_id      VARCHAR PRIMARY KEY,
    base_id      VARCHAR,              -- NULL only for the empty tree
    level        BIGINT NOT NULL,      -- derivation depth; the base is at level & (level - 1)
    tree_sum     VARCHAR NOT NULL,     -- additive set hash of the content (hex)
    n_active     BIGINT NOT NULL,
    n_tombstones BIGINT NOT NULL
);
CREATE TABLE tree_members (
    tree_id VARCHAR NOT NULL,
    edit_id VARCHAR NOT NULL,
    state   VARCHAR NOT NULL           -- active | tombstone | absent (absent here, present in the base)
);
CREATE INDEX tree_members_tree ON tree_members (tree_id);
DROP INDEX reflog_ref_time;  -- DuckDB alters no column that an index depends on
ALTER TABLE reflog ALTER COLUMN new_commit DROP NOT NULL;
CREATE INDEX reflog_ref_time ON reflog (ref, time);
CREATE TABLE protections (
    id      BIGINT PRIMARY KEY,
    branch  VARCHAR NOT NULL,
    reviews INTEGER NOT NULL,          -- approvals a merge needs; 0 = unprotected
    actor   VARCHAR NOT NULL,
    time    TIMESTAMPTZ NOT NULL,
    reason  VARCHAR
);
CREATE TABLE reviews (
    id            BIGINT PRIMARY KEY,
    source        VARCHAR NOT NULL,    -- branch proposed for merging
    source_commit VARCHAR NOT NULL,    -- its head when reviewed: the approval is stale once it moves
    target        VARCHAR NOT NULL,
    author        VARCHAR NOT NULL,
    verdict       VARCHAR NOT NULL,    -- approve | reject
    reason        VARCHAR,
    time          TIMESTAMPTZ NOT NULL
);
