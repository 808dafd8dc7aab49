"""BatchBin: offline LLM batch inference on vLLM, scheduled for throughput, run by Prefect."""

import os

# A temporary Prefect server's telemetry heartbeat can print a "database is locked" traceback
# on healthy runs (ENVIRONMENT.md); BatchBin does not need it.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# BatchBin's own loggers (e.g. predictor training) show up in Prefect's run logs.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "batchbin")

__version__ = "0.1.0"


def __getattr__(name: str):
    """`batchbin.results`, `batchbin.rejects`, `batchbin.runs` (polars DataFrames; imported on
    first use, so the command line does not pay for polars)."""
    if name in ("results", "rejects", "runs"):
        import importlib

        return getattr(importlib.import_module("batchbin.store.frames"), name)
    raise AttributeError(f"module 'batchbin' has no attribute {name!r}")
