-- sola registry schema, version 1.
-- DuckDB is the source of truth; objects/ holds the content-addressed bytes it points to.
-- Append-only tables: rows are inserted, never updated or deleted (enforced in code, checked by `sola verify`),
-- except `refs`, whose every move is recorded in `reflog`.

CREATE TABLE registry_config (
    name  VARCHAR PRIMARY KEY,          -- 'base_model', 'routing'
    value VARCHAR NOT NULL              -- canonical JSON
);

CREATE TABLE edits (
    edit_id        VARCHAR PRIMARY KEY, -- sha256 of the provenance object (= provenance object id)
    tensors_sha256 VARCHAR NOT NULL,    -- safetensors object: lora_A (r,in), lora_B (out,r), keys (n,in)
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
    key_id  BIGINT PRIMARY KEY,         -- dense, 0..n-1; the id FAISS returns
    edit_id VARCHAR NOT NULL,
    ordinal INTEGER NOT NULL,           -- row in the edit's keys tensor; 0 = the edit prompt
    prompt  VARCHAR NOT NULL
);

CREATE TABLE commits (
    commit_id VARCHAR PRIMARY KEY,      -- sha256 of the canonical commit record
    seq       BIGINT NOT NULL UNIQUE,   -- position on the chain, 0 = init
    parent_id VARCHAR,
    tree_id   VARCHAR NOT NULL,         -- identity of the active edit set + routing config + base model
    tree_sum  VARCHAR NOT NULL,         -- additive set hash of the active edit ids (hex), chained incrementally
    n_active  BIGINT NOT NULL,
    author    VARCHAR NOT NULL,
    time      TIMESTAMPTZ NOT NULL,
    op        VARCHAR NOT NULL,         -- init | add | revoke | restore | supersede
    message   VARCHAR NOT NULL,
    reason    VARCHAR
);

CREATE TABLE commit_changes (
    commit_id VARCHAR NOT NULL,
    seq       BIGINT NOT NULL,
    edit_id   VARCHAR NOT NULL,
    active    BOOLEAN NOT NULL          -- true: the edit becomes active; false: it is revoked
);

CREATE TABLE refs (
    name      VARCHAR PRIMARY KEY,
    kind      VARCHAR NOT NULL,         -- branch | tag
    commit_id VARCHAR NOT NULL
);

CREATE TABLE reflog (
    id         BIGINT PRIMARY KEY,
    ref        VARCHAR NOT NULL,
    old_commit VARCHAR,
    new_commit VARCHAR NOT NULL,
    actor      VARCHAR NOT NULL,
    time       TIMESTAMPTZ NOT NULL,
    reason     VARCHAR NOT NULL
);
