"""docs/configuration.md documents every key of the config model, with its default and allowed values.

The test walks the pydantic models from :class:`Config` down. Each section (a model) must have a heading that names
its TOML header in backticks (``[server]``, ``[[listen]]``, ``[identities.NAME]``; inline rule tables by the key that
holds them, ``policies.NAME.allow``), and under that heading a key table (``| key | type | default | allowed |
meaning |``) with one row per key, or a sub-heading naming the key. Rows must not document keys the model does not
have; defaults, literal choices and numeric bounds in a row must match the model.
"""

from __future__ import annotations

import re
import tomllib
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from ztdns.config import Config

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
# Set by the loader from the file's location, not written in a config file.
LOADER_KEYS = {"base_dir", "source"}

HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
TICKED = re.compile(r"`([^`]+)`")


@dataclass(frozen=True)
class Section:
    header: str  # as the user writes it: "[server]", "[[listen]]", "[identities.NAME]", "policies.NAME.allow"
    model: type[BaseModel]


def _unwrap(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _model(annotation: Any) -> type[BaseModel] | None:
    annotation = _unwrap(annotation)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _union_model(annotation: Any) -> type[BaseModel] | None:
    annotation = _unwrap(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for member in typing.get_args(annotation):
            found = _model(member)
            if found is not None:
                return found
    return None


def _child(path: str, annotation: Any) -> tuple[str, str, type[BaseModel]] | None:
    """(TOML header, key prefix inside it, model) when the field at ``path`` holds tables, else None."""
    annotation = _unwrap(annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if (model := _model(annotation)) is not None:
        return f"[{path}]", path, model
    if origin is list and (model := _model(args[0])) is not None:
        return f"[[{path}]]", path, model
    if origin is list and (model := _union_model(args[0])) is not None:
        return path, path, model  # inline tables in an array (rules): named by the key holding them
    if origin is dict and (model := _model(args[1])) is not None:
        return f"[{path}.NAME]", f"{path}.NAME", model
    return None


def sections(model: type[BaseModel] = Config, prefix: str = "") -> Iterator[Section]:
    """Every model under ``model`` with the TOML header that introduces it."""
    for name, field in model.model_fields.items():
        if model is Config and name in LOADER_KEYS:
            continue
        key = field.alias or name  # the TOML key ('except' is the field 'exceptions')
        child = _child(f"{prefix}.{key}" if prefix else key, field.annotation)
        if child is not None:
            header, sub_prefix, sub_model = child
            yield Section(header, sub_model)
            yield from sections(sub_model, sub_prefix)


@dataclass
class DocSection:
    level: int
    heading: str
    body: list[str]  # lines up to the next heading of any level
    subtree: list[str]  # lines up to the next heading of the same or a higher level


def doc_sections(text: str) -> list[DocSection]:
    lines = text.splitlines()
    starts = [(i, m) for i, line in enumerate(lines) if (m := HEADING.match(line))]
    out = []
    for n, (i, match) in enumerate(starts):
        level = len(match.group(1))
        next_any = starts[n + 1][0] if n + 1 < len(starts) else len(lines)
        next_same = next(
            (j for j, m in starts[n + 1 :] if len(m.group(1)) <= level),
            len(lines),
        )
        out.append(DocSection(level, match.group(2), lines[i + 1 : next_any], lines[i + 1 : next_same]))
    return out


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def key_rows(body: list[str]) -> dict[str, dict[str, str]]:
    """key → {column: cell} for every row of every table whose first column is 'key'."""
    rows: dict[str, dict[str, str]] = {}
    columns: list[str] | None = None
    for line in body:
        if not line.startswith("|"):
            columns = None
            continue
        cells = _cells(line)
        if columns is None:
            columns = cells
            continue
        if columns[0] != "key" or set(line) <= set("|-: "):
            continue
        for key in TICKED.findall(cells[0]):
            rows[key] = dict(zip(columns, cells, strict=False))
    return rows


def _toml_value(cell: str) -> object:
    ticked = TICKED.findall(cell)
    if not ticked:
        return cell
    return tomllib.loads(f"v = {ticked[0]}")["v"]


def _literals(annotation: Any) -> list[object]:
    annotation = _unwrap(annotation)
    if typing.get_origin(annotation) is Literal:
        return list(typing.get_args(annotation))
    return []


def _bounds(field: FieldInfo) -> list[object]:
    bounds: list[object] = []
    for item in field.metadata:
        for attr in ("ge", "gt", "le", "lt"):
            if isinstance(item, annotated_types.BaseMetadata) and hasattr(item, attr):
                bounds.append(getattr(item, attr))
    return bounds


def _row_problems(where: str, name: str, field: FieldInfo, row: dict[str, str]) -> list[str]:
    problems = []
    text = " | ".join(row.values())
    default = row.get("default", "")
    if field.is_required():
        if default != "required":
            problems.append(f"{where}: {name}: default should read 'required', not {default!r}")
    elif field.default is None:
        if default != "none":
            problems.append(f"{where}: {name}: default should read 'none', not {default!r}")
    elif isinstance(field.default, str | int | float | bool) or field.default == []:
        try:
            written = _toml_value(default)
        except tomllib.TOMLDecodeError:
            written = default
        if written != field.default or (type(written) is bool) != (type(field.default) is bool):
            problems.append(f"{where}: {name}: default is {field.default!r} in the model, {default!r} in the doc")
    for literal in _literals(field.annotation):
        if f'"{literal}"' not in text:
            problems.append(f'{where}: {name}: allowed value "{literal}" is not documented')
    allowed = row.get("allowed", "")
    for bound in _bounds(field):
        if not re.search(rf"(?<![\d.]){re.escape(str(bound))}(?![\d.])", allowed):
            problems.append(f"{where}: {name}: bound {bound} is not in the allowed column {allowed!r}")
    return problems


def problems(text: str) -> list[str]:
    found: list[str] = []
    docs = doc_sections(text)
    for section in sections():
        where = section.header
        matching = [doc for doc in docs if section.header in TICKED.findall(doc.heading)]
        if len(matching) != 1:
            found.append(f"{where}: {len(matching)} headings name it in backticks, expected 1")
            continue
        doc = matching[0]
        rows = key_rows(doc.body)
        sub_headings = [TICKED.findall(line) for line in doc.subtree if HEADING.match(line)]
        keys = {field.alias or name: field for name, field in section.model.model_fields.items()}  # TOML keys
        for name, field in keys.items():
            if name in rows:
                found.extend(_row_problems(where, name, field, rows[name]))
            elif not any(name in ticked for ticked in sub_headings):
                found.append(f"{where}: key {name!r} is not documented (no table row or heading)")
        for name in rows:
            if name not in keys:
                found.append(f"{where}: documents {name!r}, which the model does not have")
    return found


def test_every_key_is_documented() -> None:
    assert problems(DOC.read_text(encoding="utf-8")) == []


def test_the_walk_reaches_every_section() -> None:
    headers = {section.header for section in sections()}
    assert {
        "[server]",
        "[[listen]]",
        "[resolver]",
        "[[resolver.upstreams]]",
        "[cache]",
        "[identities.NAME]",
        "[unknown_clients]",
        "[policies.NAME]",
        "policies.NAME.allow",
        "policies.NAME.deny",
        "[[local_zones]]",
        "[log]",
        "[log.query_log]",
        "[metrics]",
    } <= headers


def test_a_missing_row_is_found() -> None:
    text = DOC.read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| `drain_seconds` |"))
    assert problems(text.replace(row + "\n", "")) == [
        "[server]: key 'drain_seconds' is not documented (no table row or heading)"
    ]


def test_a_missing_section_is_found() -> None:
    text = DOC.read_text(encoding="utf-8").replace("## `[unknown_clients]`", "## Unknown clients")
    assert "[unknown_clients]: 0 headings name it in backticks, expected 1" in problems(text)


def test_wrong_default_literal_and_bound_are_found() -> None:
    text = DOC.read_text(encoding="utf-8")
    text = text.replace('| `"/var/lib/ztdns"` |', '| `"/var/ztdns"` |')
    text = text.replace('`"nxdomain"`, `"nodata"`, `"refused"`', '`"nxdomain"`, `"nodata"`')
    text = text.replace("| 1–256 |", "| 1–128 |")
    found = problems(text)
    assert "[server]: state_dir: default is '/var/lib/ztdns' in the model, '`\"/var/ztdns\"`' in the doc" in found
    assert '[policies.NAME]: blocked_response: allowed value "refused" is not documented' in found
    assert "[server]: workers: bound 256 is not in the allowed column '1–128'" in found


def test_a_key_the_model_lacks_is_found() -> None:
    text = DOC.read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| `drain_seconds` |"))
    text = text.replace(row, row + "\n| `shutdown_grace` | number | `1` | ≥ 0 | gone |")
    assert problems(text) == ["[server]: documents 'shutdown_grace', which the model does not have"]
