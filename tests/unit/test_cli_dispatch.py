"""``lifelong.__main__.COMMAND_OWNERS``: a command's parser is built from the modules that register
it alone (so that ``lifelong get`` imports neither the broker nor the GM's API server), and that
parser is the whole parser's for its arguments."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

from lifelong.__main__ import COMMAND_MODULES, COMMAND_OWNERS, build_parser


def _registered_by(module: str) -> set[str]:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    importlib.import_module(module).register(sub)
    return set(sub.choices)


def test_the_map_names_exactly_the_commands_each_module_registers() -> None:
    for module in COMMAND_MODULES:
        mapped = {name for name, owners in COMMAND_OWNERS.items() if module in owners}
        assert mapped == _registered_by(module), module
    for owners in COMMAND_OWNERS.values():  # in the order of --help, so the parser is the same
        assert list(owners) == [m for m in COMMAND_MODULES if m in owners]


@pytest.mark.parametrize(
    "argv",
    [
        ["get", "ll", "-o", "json", "--server", "http://127.0.0.1:1"],
        ["--log-level", "WARNING", "describe", "ds", "d1", "-n", "ns"],
        ["kb", "serve", "--port", "0"],
        ["kb", "samples", "job1"],
        ["config", "use-context", "c1"],
        ["logs", "w1", "--tail", "5"],
        ["tail", "--broker", "mqtt://127.0.0.1:1"],
        ["broker", "--port", "0"],
        ["gm", "--api-port", "-1"],
    ],
)
def test_a_commands_parser_alone_parses_as_the_whole_one(argv: list[str]) -> None:
    alone, whole = build_parser(argv).parse_args(argv), build_parser().parse_args(argv)
    assert vars(alone).keys() == vars(whole).keys()
    for key, value in vars(whole).items():  # handlers are wrapped per build: compare their names
        other = vars(alone)[key]
        if callable(value):
            assert getattr(other, "__qualname__", None) == getattr(value, "__qualname__", None), key
        elif isinstance(value, argparse.ArgumentParser):
            assert other.prog == value.prog, key
        else:
            assert other == value, key


def _modules_loaded_by(argv: list[str]) -> set[str]:
    """The modules a fresh interpreter holds after building and using the parser for ``argv``."""
    code = (
        "from lifelong.__main__ import build_parser\n"
        f"build_parser({argv!r}).parse_args({argv!r})\n"
        "import sys\nprint('\\n'.join(sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return set(out.stdout.split())


def test_a_client_command_imports_neither_the_broker_nor_the_gm() -> None:
    loaded = _modules_loaded_by(["get", "ll"])
    assert "lifelong.client.commands" in loaded
    assert sorted(m for m in loaded if m.startswith(("lifelong.broker", "lifelong.cloud", "amqtt"))) == []


def test_a_client_command_without_files_or_tables_does_not_import_the_api_models() -> None:
    loaded = _modules_loaded_by(["delete", "ll", "j1"])
    assert "lifelong.client.commands" in loaded
    assert sorted(m for m in loaded if m.startswith("lifelong.common.api")) == []
