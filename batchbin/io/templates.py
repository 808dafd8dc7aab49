"""Prompt templates of table jobs: `{column}` fields filled from a row, and `{fields}`, which
writes the row's other columns as `name: value` lines in a chosen order.

    template = Template.parse("Label the flight.\\n{fields}\\nAnswer:")
    template.render({"origin": "JFK", "dest": "LAX"}, ["origin", "dest"])

Braces that are text are doubled, as in Python's str.format (`{{` and `}}`). Pure logic, no I/O
beyond reading a template file (batchbin/io/query_jobs.py runs the query).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

from batchbin.errors import BatchBinError

FIELDS = "fields"  # the placeholder for the row's remaining columns, one `name: value` line each
TEMPLATE_SUFFIXES = (".txt", ".tmpl", ".template", ".md", ".jinja", ".prompt")


def template_text(value: str) -> str:
    """The template itself: `value`, or the text of the file it names (a path ending in a
    template suffix, or any existing file without a brace in its name)."""
    path = Path(value)
    looks_like_path = "\n" not in value and "{" not in value and len(value) < 4096
    if looks_like_path and (path.suffix.lower() in TEMPLATE_SUFFIXES or path.is_file()):
        if not path.is_file():
            raise BatchBinError(f"template file not found: {value}")
        return path.read_text(encoding="utf-8")
    return value.replace("\\n", "\n")  # a line break typed on the command line as \n


@dataclass(frozen=True)
class Template:
    """A parsed template: its literal pieces and the columns it names, in order."""

    text: str
    pieces: tuple[tuple[str, str | None], ...]  # (literal text, field name or None)

    @classmethod
    def parse(cls, text: str) -> "Template":
        if not text.strip():
            raise BatchBinError("the template is empty")
        pieces = []
        try:
            for literal, name, spec, conversion in string.Formatter().parse(text):
                if name is not None and (spec or conversion):
                    raise BatchBinError(f"template field '{{{name}{'!' + conversion if conversion else ''}"
                                        f"{':' + spec if spec else ''}}}': only plain {{column}} fields are supported")
                if name is not None and not name.strip():
                    raise BatchBinError("the template has an empty field '{}': name a column, or write '{{' and '}}' "
                                        "for literal braces")
                pieces.append((literal, name.strip() if name is not None else None))
        except ValueError as error:  # an unmatched brace
            raise BatchBinError(f"the template does not parse: {error} (write '{{{{' and '}}}}' for literal braces)") \
                from None
        return cls(text, tuple(pieces))

    @property
    def columns(self) -> list[str]:
        """The columns the template names, `fields` left out, in order of first use."""
        seen: dict[str, None] = {}
        for _, name in self.pieces:
            if name is not None and name != FIELDS:
                seen.setdefault(name)
        return list(seen)

    @property
    def uses_fields(self) -> bool:
        return any(name == FIELDS for _, name in self.pieces)

    def check_columns(self, available: list[str]) -> None:
        """One clear error naming the first column the template asks for that is not there."""
        for name in self.columns:
            if name not in available:
                raise BatchBinError(f"the template names the column '{name}', which the query does not return "
                                    f"(its columns: {', '.join(available)})")

    def render(self, row: dict[str, str | None], field_order: list[str]) -> str:
        """The prompt of one row (values as text; None is written as an empty value)."""
        parts = []
        for literal, name in self.pieces:
            parts.append(literal)
            if name == FIELDS:
                parts.append(fields_block(row, field_order))
            elif name is not None:
                value = row[name]
                parts.append("" if value is None else value)
        return "".join(parts)


def field_line(name: str, value: str | None) -> str:
    """One `name: value` line of `{fields}` (without its line break)."""
    return f"{name}: {'' if value is None else value}"


def fields_block(row: dict[str, str | None], field_order: list[str]) -> str:
    """The `{fields}` text: one line per column, in `field_order`."""
    return "\n".join(field_line(name, row[name]) for name in field_order)
