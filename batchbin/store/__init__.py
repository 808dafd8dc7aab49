"""The system of record: the DuckDB file, its named queries, run records, the run lock, polars frames."""
