-- Version 3: a copy of every routing key next to its row, so the key index of any snapshot is
-- rebuilt from one table scan instead of reading every edit's tensors object (100k edits: 230 MB
-- of keys instead of 3.6 GB of objects). The tensors object stays the source of truth: the
-- vector is written in the same transaction as its `edit_keys` row, and `sola verify` compares
-- it byte for byte with row `ordinal` of the edit's `keys` tensor. Registries made before this
-- version are back-filled from their objects when the migration runs (registry/store.py).
CREATE TABLE key_vectors (
    key_id BIGINT PRIMARY KEY,          -- = edit_keys.key_id
    vector BLOB NOT NULL                -- little-endian float32 x key_dim: the bytes of that key tensor row
);
