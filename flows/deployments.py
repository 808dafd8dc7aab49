"""Where BatchBin's Prefect deployments run: the pull step of every deployment in prefect.yaml.

    prefect deploy --all                      # from the repository root
    prefect worker start --pool batchbin      # from any folder

A worker runs each flow run in a new process, which first runs the deployment's pull steps and
then loads the entrypoint (`flows/batch.py`) relative to the folder they leave it in. Relative
paths in a run's parameters (`examples/sample_prompts.jsonl`, `out/batchbin.duckdb`) resolve
against that same folder. It is the project directory:

1. `$BATCHBIN_HOME`, when the flow run's environment has it (set it in the work pool's or a
   deployment's job variables, `env:`), else
2. the BatchBin checkout that the worker's Python imports `batchbin` from (the folder holding
   `prefect.yaml`; `pip install -e .` / `make setup` install it that way).

So it depends neither on the folder `prefect deploy` ran in nor on the one the worker started in
(Prefect's `set_working_directory: "{{ $PWD }}"` is resolved in the flow run's process, from the
worker's own `$PWD`).
"""

from __future__ import annotations

import os
from pathlib import Path

from batchbin.errors import BatchBinError

HOME_VARIABLE = "BATCHBIN_HOME"
ENTRYPOINT_FILE = Path("flows") / "batch.py"  # what a project directory must hold


def checkout_directory() -> Path | None:
    """The repository the `batchbin` package is imported from (an editable install), or None
    (installed into site-packages: no prefect.yaml beside it)."""
    import batchbin

    root = Path(batchbin.__file__).resolve().parent.parent
    return root if (root / "prefect.yaml").is_file() else None


def project_directory() -> Path:
    """The folder deployments run in: $BATCHBIN_HOME, else the checkout batchbin comes from."""
    home = os.environ.get(HOME_VARIABLE, "").strip()
    if home:
        directory = Path(home).expanduser().resolve()
        where = f"${HOME_VARIABLE} ({home})"
    else:
        directory = checkout_directory()
        if directory is None:
            raise BatchBinError(f"BatchBin's deployments run from a checkout of its repository, and batchbin is "
                                f"installed without one: set {HOME_VARIABLE} in the work pool's job variables "
                                "(env) to the folder that holds prefect.yaml and flows/")
        where = "the BatchBin checkout the worker's Python imports"
    if not (directory / ENTRYPOINT_FILE).is_file():
        raise BatchBinError(f"{where}: {directory} holds no {ENTRYPOINT_FILE}; point {HOME_VARIABLE} at the "
                            "folder that holds prefect.yaml and flows/")
    return directory


def set_project_directory() -> dict[str, str]:
    """Prefect pull step: make the project directory this flow run's working directory."""
    directory = project_directory()
    os.chdir(directory)
    return {"directory": str(directory)}
