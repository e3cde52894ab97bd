"""The ``lifelong`` command's user-facing contract: ``--help`` everywhere, one clear line for a
user's mistake (never a traceback), meaningful exit codes (2 usage, 1 unreachable/failed).

Everything here runs in-process through ``lifelong.__main__.main``; nothing needs a broker or
a GM (the "unreachable" cases point at a closed port on loopback).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from harness.waiting import free_port

from lifelong.__main__ import build_parser, main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def one_clear_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert "Traceback" not in err
    return lines[0]


def commands() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


def test_every_command_is_registered() -> None:
    assert {"broker", "gm", "lc", "apply", "get", "describe", "delete", "nodes", "tail", "demo"} <= set(
        commands()
    )


@pytest.mark.parametrize("command", commands())
def test_help_on_every_command(capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    assert out.startswith(f"usage: lifelong {command}")


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys)
    assert code == 2 and "usage: lifelong" in out


def test_unknown_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "nodes", "--bogus")
    assert code == 2 and "unrecognized arguments: --bogus" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [("get", "ll"), ("nodes",), ("describe", "ll", "job1"), ("delete", "ll", "job1")],
    ids=["get", "nodes", "describe", "delete"],
)
def test_gm_unreachable_is_one_line_exit_1(capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]) -> None:
    server = f"http://127.0.0.1:{free_port()}"
    code, _, err = run(capsys, *argv, "--server", server)
    assert code == 1
    assert one_clear_line(err) == f"error: cannot reach the GM at {server}: [Errno 111] Connection refused"


def test_unknown_kind_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "get", "pods", "--server", f"http://127.0.0.1:{free_port()}")
    assert code == 2
    assert 'resource type "pods"' in one_clear_line(err)


def test_apply_missing_file_is_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "apply", "-f", str(tmp_path / "nope.yaml"))
    assert code == 2
    assert "does not exist" in one_clear_line(err)


def test_apply_invalid_yaml_names_the_field(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "ds.yaml"
    bad.write_text("apiVersion: sedna.io/v1alpha1\nkind: Dataset\nmetadata: {name: d}\nspec: {format: txt}\n")
    code, _, err = run(capsys, "apply", "-f", str(bad))
    assert code == 2
    assert "Traceback" not in err and "url" in err


def test_tail_bad_broker_address_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "tail", "--broker", "localhost:1883")
    assert code == 2
    assert "has no scheme" in one_clear_line(err)


def test_tail_bad_node_name_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "tail", "--node", "a/b")
    assert code == 2
    assert one_clear_line(err).startswith("error: ")


def test_tail_bad_count_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "tail", "--count", "0")
    assert code == 2
    assert one_clear_line(err) == "error: --count must be at least 1"


def test_tail_unreachable_broker_is_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"
    code, _, err = run(capsys, "tail", "--broker", url, "--connect-timeout", "0.5")
    assert code == 1
    assert one_clear_line(err).startswith(f"error: cannot reach the broker at {url} within 0.5s")


def test_tail_missing_password_file_is_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "tail", "--username", "gm", "--password-file", str(tmp_path / "none"))
    assert code == 2
    assert one_clear_line(err).startswith("error: cannot read --password-file")


def test_gm_missing_password_file_is_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "none"
    code, _, err = run(capsys, "gm", "--broker", "mqtt://127.0.0.1:1", "--password-file", str(missing))
    assert code == 2
    assert one_clear_line(err) == f"error: cannot read --password-file {missing}: No such file or directory"


@pytest.mark.parametrize("value", ["0", "many"])
def test_gm_max_nodes_must_be_a_whole_number_of_at_least_1(
    capsys: pytest.CaptureFixture[str], value: str
) -> None:
    code, _, err = run(capsys, "gm", "--broker", "mqtt://127.0.0.1:1", "--max-nodes", value)
    assert code == 2
    assert "--max-nodes" in err and ("at least 1" in err or "not a whole number" in err)


def test_demo_rounds_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "demo", "--scenario", "digits", "--rounds", "0")
    assert code == 2
    assert one_clear_line(err) == "error: --rounds must be at least 1"


def test_demo_rounds_belong_to_the_digits_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "demo", "--rounds", "3")
    assert code == 2
    assert one_clear_line(err).startswith("error: --rounds is for --scenario digits")


def test_demo_refuses_a_non_empty_workdir(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "something").write_text("x")
    code, _, err = run(capsys, "demo", "--workdir", str(tmp_path))
    assert code == 2
    assert "is not empty" in one_clear_line(err)


def test_demo_without_its_examples_is_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "demo", "--examples", str(tmp_path))
    assert code == 2
    assert "cannot find examples/lifelong" in one_clear_line(err)
    code, _, err = run(capsys, "demo", "--scenario", "digits", "--examples", str(tmp_path))
    assert code == 2
    assert "cannot find examples/demo" in one_clear_line(err)
