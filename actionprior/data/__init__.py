"""Data: shard schema, writing, statistics, normalisation, windowing and the streaming DataModule."""
