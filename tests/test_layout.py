"""Where things are, checked: the folders form layers (the core imports nothing above it), a
stage module knows no other stage, the product keeps its SQL in sql/, and the product's command
line does not load the benchmark."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("batchbin", "tasks", "flows", "predictors", "cli")
# The folders in layers, lowest first: a module imports only from its own folder and those below.
# (import path prefix, folder)
LAYERS = (
    ("batchbin", "batchbin"),            # the core: store, engine, sim, scaleout, io
    ("batchbin.predictors", "predictors"),
    ("batchbin.tasks", "tasks"),
    ("batchbin.flows", "flows"),
    ("batchbin.cli", "cli"),
)
ABOVE_CORE = tuple(prefix for prefix, _ in LAYERS[1:]) + ("batchbin.bench", "batchbin.sql")
# stage module -> (stage name, SQL file stem)
STAGES = {
    "load": ("load", "load"),
    "tokenize": ("tokenize", "tokenize"),
    "reuse": ("reuse", "reuse"),
    "prefixes": ("group_prefixes", "prefixes"),
    "predict": ("predict_lengths", "predictors"),
    "probe": ("probe", "probe"),
    "schedule": ("schedule", "schedule"),
    "generate": ("generate", "generate"),
    "report": ("report", "report"),
    "step_costs": ("learn_step_costs", "step_costs"),
}
SQL_START = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|BEGIN|COMMIT|ROLLBACK|COPY|WITH|PRAGMA|"
                       r"ATTACH|DETACH|INSTALL|CHECKPOINT|SET|LOAD)\s")
SELECT_FROM = re.compile(r"^\s*select\b.+\bfrom\b", re.IGNORECASE | re.DOTALL)


def code_strings(path: Path) -> list[tuple[int, str]]:
    """The string constants of a module that are not docstrings, with their line."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def layer_of(module: str) -> int:
    """The layer of an import path of BatchBin's (the core: 0)."""
    for level in range(len(LAYERS) - 1, -1, -1):
        prefix = LAYERS[level][0]
        if module == prefix or module.startswith(prefix + "."):
            return level
    raise ValueError(module)


def product_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("level", range(len(LAYERS)))
def test_a_folder_imports_nothing_from_the_folders_above_it(level):
    prefix, folder = LAYERS[level]
    for path in product_files(folder):
        for imported in imported_modules(path):
            if not imported.startswith("batchbin") or imported.startswith("batchbin.sql"):
                continue
            assert not imported.startswith("batchbin.bench"), f"{path.relative_to(ROOT)} imports the benchmark ({imported})"
            assert layer_of(imported) <= level, \
                f"{path.relative_to(ROOT)} imports {imported}, which sits above it (layers: {[f for _, f in LAYERS]})"


def test_the_core_is_split_into_subpackages():
    """batchbin/ holds only its subpackages and the few modules every one of them shares."""
    loose = {path.name for path in (ROOT / "batchbin").glob("*.py")}
    assert loose <= {"__init__.py", "config.py", "errors.py", "scheduling.py"}, loose
    for package in ("store", "engine", "sim", "scaleout", "io"):
        assert (ROOT / "batchbin" / package / "__init__.py").is_file()


def test_every_stage_module_is_listed():
    modules = {path.stem for path in (ROOT / "tasks").glob("*.py")} - {"__init__", "common", "generate_ray"}
    assert modules == set(STAGES), "tasks/ holds one module per stage (plus common.py); update STAGES here"


@pytest.mark.parametrize("module", sorted(STAGES))
def test_a_stage_module_neither_imports_nor_names_another_stage(module):
    path = ROOT / "tasks" / f"{module}.py"
    others = {name: stage for name, stage in STAGES.items() if name != module}
    for imported in imported_modules(path):
        assert not any(imported.startswith(f"batchbin.tasks.{other}") for other in others), \
            f"tasks/{module}.py imports {imported}: the flow, not a stage, knows the other stages"
    for line, text in code_strings(path):
        for other, (stage, sql_file) in others.items():
            assert text != stage and not text.startswith(f"{sql_file}."), \
                f"tasks/{module}.py:{line} names the stage '{other}' ({text!r})"


@pytest.mark.parametrize("folder", PRODUCT)
def test_no_sql_outside_sql_files(folder):
    """A string that is a statement belongs in sql/ (a message may still quote a query to try)."""
    for path in product_files(folder):
        for line, text in code_strings(path):
            assert not SQL_START.match(text) and not SELECT_FROM.search(text), \
                f"{path.relative_to(ROOT)}:{line} holds SQL ({text[:50]!r}); put it in sql/ as a named query"


def test_the_command_line_does_not_import_the_benchmark():
    for imported in imported_modules(ROOT / "cli" / "main.py"):
        assert not imported.startswith(("batchbin.bench", "bench")), f"cli/main.py imports {imported}"


SUBPROCESS_CALLS = {"run", "call", "check_call", "check_output"}


@pytest.mark.parametrize("folder", ["tests", "bench"])
def test_every_subprocess_has_a_timeout(folder):
    """A hung engine must fail the run, not hang CI."""
    for path in sorted((ROOT / folder).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SUBPROCESS_CALLS
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "subprocess"):
                assert any(keyword.arg == "timeout" for keyword in node.keywords), \
                    f"{path.relative_to(ROOT)}:{node.lineno}: subprocess.{node.func.attr} without a timeout"
