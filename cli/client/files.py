"""Reading resource files for ``lifelong apply -f`` and ``delete -f``: files, directories or stdin.

Who calls it: the client's sub-commands (``lifelong.client.commands``), ``lifelong demo`` and
the fault suite. Every document is parsed and validated by the API models of
``lifelong.common.api`` before anything is sent, so a typo is reported with its file and field
(imported here only when a file is read: a client command without ``-f`` starts without it).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lifelong.common.errors import ValidationError


def read_resources(paths: Sequence[str], stdin: Any = None) -> list[dict[str, Any]]:
    """Every resource in the files, directories (``*.yaml``, ``*.yml``, ``*.json``) or ``-``."""
    from lifelong.common.api import dump_resource

    out: list[dict[str, Any]] = []
    for given in paths:
        if given == "-":
            text = (stdin or sys.stdin).read()
            out.extend(dump_resource(r) for r in _load(text, "<stdin>"))
            continue
        path = Path(given)
        if path.is_dir():
            files = sorted(
                p for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".json") and p.is_file()
            )
        elif path.exists():
            files = [path]
        else:
            raise ValidationError([("", f'the path "{given}" does not exist')])
        for file in files:
            try:
                text = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ValidationError([("", f"cannot read {file}: {exc}")]) from None
            out.extend(dump_resource(r) for r in _load(text, str(file)))
    return out


def _load(text: str, source: str) -> list[Any]:
    """``load_documents`` with what it lets through turned into a ``ValidationError``: YAML's
    reader refusing a control character, and nesting too deep to parse (found by the fault
    suite's fuzzing, tests/faults/test_bad_input.py)."""
    import yaml

    from lifelong.common.api import load_documents

    try:
        return list(load_documents(text, source=source))
    except yaml.YAMLError as exc:
        raise ValidationError([("", f"invalid YAML: {exc}")], source=source) from None
    except RecursionError:
        raise ValidationError([("", "the document is nested too deeply")], source=source) from None
