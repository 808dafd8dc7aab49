"""Click options generated from the pydantic settings models, so that every flow parameter
has a flag with the model's own description and default (declared once, used by several
commands)."""

from __future__ import annotations

import typing
from typing import Any, Callable

import click
from pydantic import BaseModel

from batchbin.config import EngineOptions, JobConfig


def _click_type(annotation: Any):
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return click.Choice([str(a) for a in typing.get_args(annotation)])
    if args and len(args) == 1:
        return _click_type(args[0])
    if args and all(typing.get_origin(a) is typing.Literal for a in args):
        return click.Choice([str(v) for a in args for v in typing.get_args(a)])
    return {int: int, float: float, bool: bool, str: str}.get(annotation, str)


SHORT_FLAGS = {"db_path": "--db", "output_path": "--output"}


def options_from(model: type[BaseModel], prefix: str = "", skip: tuple[str, ...] = ()) -> Callable:
    """A decorator adding one --flag per field of `model`."""

    def decorate(command: Callable) -> Callable:
        for name, field in reversed(list(model.model_fields.items())):
            if name in skip or name == "engine":
                continue
            flag = "--" + name.replace("_", "-")
            kind = _click_type(field.annotation)
            default = None if field.is_required() else field.default
            help_text = field.description or ""
            if kind is bool:
                command = click.option(f"{flag}/--no-{name.replace('_', '-')}", f"{prefix}{name}", default=None,
                                       help=help_text)(command)
            else:
                shown = f" [default: {default}]" if default is not None and not prefix else ""
                flags = [SHORT_FLAGS[name], flag] if name in SHORT_FLAGS else [flag]
                command = click.option(*flags, f"{prefix}{name}", type=kind, default=None,
                                       help=help_text + shown)(command)
        return command

    return decorate


job_options = options_from(JobConfig, skip=("input_path",))
engine_options = options_from(EngineOptions, prefix="engine__")


def split_options(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(job fields, engine fields) that the user actually set."""
    job = {k: v for k, v in values.items() if v is not None and not k.startswith("engine__")}
    engine = {k[len("engine__"):]: v for k, v in values.items() if v is not None and k.startswith("engine__")}
    return job, engine
