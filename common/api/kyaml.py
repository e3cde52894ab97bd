"""YAML the Kubernetes way: PyYAML's safe loader and dumper with Kubernetes' rules.

Who calls it: ``lifelong.common.api.loader`` (``load_yaml``, ``load_documents``, ``dump_yaml``),
importing it when a YAML text is read or written, never at its own import: a process that only
parses resources from the bus (the LC) does not load PyYAML (docs/performance.md, "LC").

``end: 24:00`` is the string ``"24:00"`` (not the base-60 integer 1440), timestamps stay
strings, ``1e3`` is a number, ``=`` is a string, and a key given twice is an error.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from lifelong.common.errors import ValidationError

_INT = re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_DROPPED_TAGS = {_INT_TAG, _FLOAT_TAG, "tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value"}
_MERGE_TAG = "tag:yaml.org,2002:merge"


class Loader(yaml.SafeLoader):
    """SafeLoader without base-60 numbers, timestamps and ``=``; duplicate keys rejected."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in _DROPPED_TAGS]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable; SafeConstructor reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


Loader.add_implicit_resolver(_INT_TAG, _INT, list("-+0123456789"))
Loader.add_implicit_resolver(_FLOAT_TAG, _FLOAT, list("-+0123456789."))


class Dumper(yaml.SafeDumper):
    """Quotes every string that either PyYAML's default or our loader would read as non-string."""

    yaml_implicit_resolvers = {
        first: list(resolvers) for first, resolvers in yaml.SafeDumper.yaml_implicit_resolvers.items()
    }


Dumper.add_implicit_resolver(_FLOAT_TAG, _FLOAT, list("-+0123456789."))
# Quote anything base-60-looking ("02:00" too), for YAML 1.1 readers stricter than PyYAML.
Dumper.add_implicit_resolver(_INT_TAG, re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-9_]+)+$"), list("-+0123456789"))


def _yaml_error(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "malformed YAML"
        if mark is not None:
            return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
        return f"invalid YAML: {problem}"
    return f"invalid YAML: {exc}"


def documents(text: str, source: str | None) -> Iterator[tuple[Any, Node | None]]:
    """Each document of ``text`` as plain data with its node (for line numbers); malformed YAML
    raises ``ValidationError`` with line and column."""
    try:
        loader = Loader(text)  # the reader rejects control characters here, before parsing
    except yaml.YAMLError as exc:
        raise ValidationError([("", _yaml_error(exc))], source=source) from None
    try:
        while True:
            try:
                if not loader.check_node():
                    return
                node = loader.get_node()
                data = loader.construct_document(node)
            except yaml.YAMLError as exc:
                raise ValidationError([("", _yaml_error(exc))], source=source) from None
            yield data, node
    finally:
        loader.dispose()


def line_of(node: Node | None, loc: tuple[int | str, ...]) -> int | None:
    """1-based line of the YAML node at ``loc`` (or of its deepest existing ancestor)."""
    if node is None:
        return None
    for part in loc:
        child: Node | None = None
        if isinstance(node, MappingNode) and isinstance(part, str):
            for key_node, value_node in node.value:
                if isinstance(key_node, ScalarNode) and key_node.value == part:
                    child = value_node
                    break
        elif isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            child = node.value[part]
        if child is None:
            break
        node = child
    return node.start_mark.line + 1
