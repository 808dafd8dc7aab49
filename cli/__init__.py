"""The `batchbin` command: each command a thin wrapper over one library or flow call."""
