"""Shards on disk: the one place that knows the HDF5 schema.

Modules:
    shards: the schema (columns, attributes, variant names), the atomic `ShardWriter`, and
        attribute readers.
    versions: `SCHEMA_VERSION` and the migration of earlier versions' attributes, one function
        per version, applied by the attribute and index readers.
    columns: `read_columns` and `column_blocks`, the one reader of whole columns (labels, ids,
        references, audio blocks).
    shard_io: per-row feature reads through memory maps, opened lazily per process.
    index: `index.json` of a folder, row lookups by `(clip_id, segment)`, and `verify_shards` (against a schema
        stage one gives: `features.verify.verify_folder`).

Nothing is imported here, so `import avsc_pipeline.storage` stays cheap.
"""
