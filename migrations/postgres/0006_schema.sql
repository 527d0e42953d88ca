-- sola registry schema for the PostgreSQL catalog: version 6, the same tables, columns and
-- meaning as the DuckDB catalog after its migrations 1-6 (migrations/000[1-6]_*.sql, which
-- document each column). The Postgres catalog started at version 6, so its first migration
-- creates that schema at once; every later version ships as a pair with the same number,
-- `migrations/NNNN_*.sql` and `migrations/postgres/NNNN_*.sql` (a test checks the pairing).
--
-- Differences of form only:
-- * `commit_changes.rowid`: an identity column keeping insertion order (DuckDB's implicit rowid).
-- * BYTEA for DuckDB's BLOB.
CREATE TABLE registry_config (
    name  VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
);
CREATE TABLE edits (
    edit_id        VARCHAR PRIMARY KEY,
    tensors_sha256 VARCHAR NOT NULL,
    prompt         VARCHAR NOT NULL,
    target         VARCHAR NOT NULL,
    subject        VARCHAR,
    author         VARCHAR NOT NULL,
    reason         VARCHAR,
    source         VARCHAR,
    created_at     TIMESTAMPTZ NOT NULL,
    n_keys         INTEGER NOT NULL
);
CREATE TABLE edit_keys (
    key_id  BIGINT PRIMARY KEY,
    edit_id VARCHAR NOT NULL,
    ordinal INTEGER NOT NULL,
    prompt  VARCHAR NOT NULL
);
CREATE INDEX edit_keys_edit ON edit_keys (edit_id);
CREATE TABLE key_vectors (
    key_id BIGINT PRIMARY KEY,
    vector BYTEA NOT NULL
);
CREATE TABLE commits (
    commit_id VARCHAR PRIMARY KEY,
    seq       BIGINT NOT NULL UNIQUE,
    parent_id VARCHAR,
    tree_id   VARCHAR NOT NULL,
    tree_sum  VARCHAR NOT NULL,
    n_active  BIGINT NOT NULL,
    author    VARCHAR NOT NULL,
    time      TIMESTAMPTZ NOT NULL,
    op        VARCHAR NOT NULL,
    message   VARCHAR NOT NULL,
    reason    VARCHAR,
    format    INTEGER DEFAULT 1
);
CREATE TABLE commit_changes (
    commit_id VARCHAR NOT NULL,
    seq       BIGINT NOT NULL,
    edit_id   VARCHAR NOT NULL,
    active    BOOLEAN NOT NULL,
    state     VARCHAR,
    rowid     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY
);
CREATE INDEX commit_changes_edit ON commit_changes (edit_id);
CREATE INDEX commit_changes_commit ON commit_changes (commit_id);
CREATE TABLE commit_parents (
    commit_id VARCHAR NOT NULL,
    position  INTEGER NOT NULL,
    parent_id VARCHAR NOT NULL,
    PRIMARY KEY (commit_id, position)
);
CREATE INDEX commit_parents_parent ON commit_parents (parent_id);
CREATE TABLE trees (
    tree_id      VARCHAR PRIMARY KEY,
    base_id      VARCHAR,
    level        BIGINT NOT NULL,
    tree_sum     VARCHAR NOT NULL,
    n_active     BIGINT NOT NULL,
    n_tombstones BIGINT NOT NULL
);
CREATE TABLE tree_members (
    tree_id VARCHAR NOT NULL,
    edit_id VARCHAR NOT NULL,
    state   VARCHAR NOT NULL
);
CREATE INDEX tree_members_tree ON tree_members (tree_id);
CREATE TABLE refs (
    name      VARCHAR PRIMARY KEY,
    kind      VARCHAR NOT NULL,
    commit_id VARCHAR NOT NULL
);
CREATE TABLE reflog (
    id         BIGINT PRIMARY KEY,
    ref        VARCHAR NOT NULL,
    old_commit VARCHAR,
    new_commit VARCHAR,
    actor      VARCHAR NOT NULL,
    time       TIMESTAMPTZ NOT NULL,
    reason     VARCHAR NOT NULL,
    kind       VARCHAR,
    prev_hash  VARCHAR,
    entry_hash VARCHAR
);
CREATE INDEX reflog_ref_time ON reflog (ref, time);
CREATE TABLE protections (
    id      BIGINT PRIMARY KEY,
    branch  VARCHAR NOT NULL,
    reviews INTEGER NOT NULL,
    actor   VARCHAR NOT NULL,
    time    TIMESTAMPTZ NOT NULL,
    reason  VARCHAR
);
CREATE TABLE reviews (
    id            BIGINT PRIMARY KEY,
    source        VARCHAR NOT NULL,
    source_commit VARCHAR NOT NULL,
    target        VARCHAR NOT NULL,
    author        VARCHAR NOT NULL,
    verdict       VARCHAR NOT NULL,
    reason        VARCHAR,
    time          TIMESTAMPTZ NOT NULL
);
