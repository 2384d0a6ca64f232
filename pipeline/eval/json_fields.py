"""Reading a benchmark's JSON files: a file or field not of its published shape is one line
naming the file and the field (``BadInput``, exit 2), never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.config import BadInput
from pipeline.text import encoding


def read_json(file: Path, kind: type) -> Any:
    """The file's one JSON document, which must be a ``kind`` (dict or list)."""
    try:
        data = json.loads(file.read_bytes())
    except (OSError, ValueError, RecursionError) as e:
        raise BadInput(f"benchmarks: {file} is not a JSON file ({e})") from None
    if not isinstance(data, kind):
        raise BadInput(f"benchmarks: {file}: expected a JSON {kind.__name__}, got {type(data).__name__}")
    return data


def json_lines(file: Path) -> list[tuple[str, Any]]:
    """(where, value) for each non-blank line of a JSON-lines file."""
    rows = []
    for number, line in enumerate(encoding.decode(file.read_bytes(), "replace").splitlines(), 1):
        if line.strip():
            where = f"{file} line {number}"
            try:
                rows.append((where, json.loads(line)))
            except (ValueError, RecursionError) as e:
                raise BadInput(f"benchmarks: {where}: not JSON ({e})") from None
    return rows


def field(item: Any, name: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``item[name]``, which must be a ``kind``."""
    if not isinstance(item, dict) or not isinstance(item.get(name), kind):
        kinds = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise BadInput(f"benchmarks: {where}: field {name!r} is missing or not a {kinds}")
    return item[name]
