"""Commands that other packages or extras add to `batchbin`, loaded only when used.

A plugin is an entry point in the group `batchbin.commands` (pyproject.toml), named as its
command, e.g. `bench = "batchbin.bench.cli:bench_command"`. `batchbin --help` lists it; its
module is imported only when the command runs or its help is shown, so `batchbin run` never
imports the benchmark or what it needs.
"""

from __future__ import annotations

import sys
from functools import cache
from importlib.metadata import EntryPoint, entry_points

import click

GROUP = "batchbin.commands"


@cache
def plugin_entry_points() -> dict[str, EntryPoint]:
    """The installed plugin commands by name (the package must be installed, editable or not)."""
    return {point.name: point for point in entry_points(group=GROUP)}


class PluginGroup(click.Group):
    """A click group that also offers the plugin commands, importing each on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(plugin_entry_points()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None and name in plugin_entry_points():
            command = plugin_entry_points()[name].load()
            self.add_command(command, name)
        return command


def fail(message: str) -> None:
    """End a command with its error in one red line (exit code 1)."""
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(1)
