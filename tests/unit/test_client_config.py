"""The client's config file (cli/client/config.py): where it is found, what wins over what, the
one-line errors of a malformed file, and ``lifelong config view|use-context|...``.

No GM is needed: what the file chooses is read from ``connection()``; the commands run through
``lifelong.__main__.main`` in-process (``lifelong config ...`` never speaks to a GM).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lifelong.__main__ import main
from lifelong.client.config import DEFAULT_SERVER, connection
from lifelong.common.errors import ConfigError

TOKEN = "s3cret-token-abc"
OTHER_TOKEN = "other-token-xyz"

CONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [
        {"name": "prod", "cluster": {"server": "https://gm.example:9300", "certificate-authority": "ca.crt"}},
        {"name": "local", "cluster": {"server": "http://127.0.0.1:9300"}},
    ],
    "users": [
        {"name": "admin", "user": {"token": TOKEN}},
        {"name": "viewer", "user": {"token-file": "viewer.token"}},
    ],
    "contexts": [
        {"name": "prod-admin", "context": {"cluster": "prod", "user": "admin", "namespace": "team-a"}},
        {"name": "local-viewer", "context": {"cluster": "local", "user": "viewer"}},
    ],
    "current-context": "prod-admin",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LIFELONG_CONFIG", raising=False)
    monkeypatch.delenv("LIFELONG_TOKEN", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def write(tmp_path: Path, data: object, name: str = "config") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    (tmp_path / "viewer.token").write_text(OTHER_TOKEN + "\n")
    (tmp_path / "ca.crt").write_text("not read unless the server is https\n")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_without_a_config_file_the_defaults_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = connection()
    assert (conn.server, conn.token, conn.ca_file, conn.namespace) == (DEFAULT_SERVER, None, None, None)
    monkeypatch.setenv("LIFELONG_TOKEN", TOKEN)
    assert connection(server="http://h:1").token == TOKEN
    assert connection(server="http://h:1").server == "http://h:1"


def test_the_default_path_is_read(tmp_path: Path) -> None:
    home = tmp_path / "home" / ".config" / "lifelong"
    home.mkdir(parents=True)
    write(home, CONFIG)
    assert connection().server == "https://gm.example:9300"


def test_the_current_context_chooses_server_token_ca_and_namespace(tmp_path: Path) -> None:
    path = write(tmp_path, CONFIG)
    conn = connection(config=str(path))
    assert conn.server == "https://gm.example:9300"
    assert conn.token == TOKEN
    assert conn.ca_file == str(tmp_path / "ca.crt")  # relative to the file's folder, as kubectl
    assert conn.namespace == "team-a"
    assert TOKEN not in repr(conn)


def test_what_wins_over_what(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, CONFIG)
    # --context over current-context; a user's token-file
    conn = connection(config=str(path), context="local-viewer")
    assert (conn.server, conn.token, conn.namespace) == ("http://127.0.0.1:9300", OTHER_TOKEN, None)
    # --server over the context's cluster (its CA stays)
    conn = connection(config=str(path), server="https://other:1")
    assert (conn.server, conn.ca_file) == ("https://other:1", str(tmp_path / "ca.crt"))
    # LIFELONG_CONFIG when --config is not given; --config over it
    monkeypatch.setenv("LIFELONG_CONFIG", str(path))
    assert connection().server == "https://gm.example:9300"
    other = write(tmp_path, {**CONFIG, "current-context": "local-viewer"}, name="other")
    assert connection(config=str(other)).server == "http://127.0.0.1:9300"
    # LIFELONG_TOKEN over the user's token and over its token-file
    monkeypatch.setenv("LIFELONG_TOKEN", "env-token")
    assert connection().token == "env-token"
    assert connection(context="local-viewer").token == "env-token"
    # a user's token over its token-file
    both = {**CONFIG, "users": [{"name": "admin", "user": {"token": TOKEN, "token-file": "viewer.token"}}]}
    monkeypatch.delenv("LIFELONG_TOKEN")
    assert connection(config=str(write(tmp_path, both, name="both"))).token == TOKEN


def test_flat_entries_are_accepted_too(tmp_path: Path) -> None:
    flat = {
        "clusters": [{"name": "c", "server": "http://h:2"}],
        "users": [{"name": "u", "token": TOKEN}],
        "contexts": [{"name": "x", "cluster": "c", "user": "u"}],
        "current-context": "x",
    }
    conn = connection(config=str(write(tmp_path, flat)))
    assert (conn.server, conn.token) == ("http://h:2", TOKEN)


def _with(**changes: object) -> dict[str, object]:
    return {**CONFIG, **changes}


MALFORMED = [
    ("clusters: [\n", "not valid YAML (line 2, column 1)"),
    ("- a list\n", "must be a mapping"),
    (_with(users=[{"name": "admin", "user": {"tokn": TOKEN}}]), "users[0].user.tokn: Extra inputs"),
    (_with(users=[{"name": "admin", "user": {"token": 12345}}]),
     "users[0].user.token: Input should be a valid string"),
    (_with(clusters=[{"name": "prod", "cluster": {}}]), "clusters[0].cluster.server: Field required"),
    (_with(contexts="prod"), "contexts: Input should be a valid list"),
    (_with(**{"current-context": "nope"}),
     "current-context: no context named 'nope' (contexts: prod-admin, local-viewer)"),
    (_with(contexts=[{"name": "prod-admin", "context": {"cluster": "gone", "user": "admin"}}]),
     "contexts[0].context.cluster: no cluster named 'gone'"),
    (_with(contexts=[{"name": "prod-admin", "context": {"cluster": "prod", "user": "gone"}}]),
     "contexts[0].context.user: no user named 'gone'"),
    (_with(users=[{"name": "admin", "user": {"token-file": "missing.token"}}]),
     "users[0].user.token-file: cannot read"),
    (_with(clusters=[{"name": "prod", "cluster": {"server": "https://h", "certificate-authority": "x"}}]),
     "clusters[0].cluster.certificate-authority: cannot read"),
    (_with(users=[{"name": "admin", "user": {"token": TOKEN}}, {"name": "admin", "user": {}}]),
     "users: the name 'admin' is given twice"),
]  # fmt: skip


@pytest.mark.parametrize(("content", "expected"), MALFORMED)
def test_a_malformed_file_is_one_line_naming_the_file_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: object, expected: str
) -> None:
    path = write(tmp_path, content)
    with pytest.raises(ConfigError) as err:
        connection(config=str(path))
    assert str(err.value).startswith(f"config file {path}: ")
    assert expected in str(err.value)
    code, out, stderr = run(capsys, "get", "ll", "--config", str(path))
    assert (code, out) == (2, "")
    assert stderr == f"error: {err.value}\n"  # one line, no traceback
    assert TOKEN not in stderr


def test_a_config_file_asked_for_must_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nope"
    code, _, err = run(capsys, "nodes", "--config", str(missing))
    assert (code, err) == (2, f"error: config file {missing}: no such file\n")
    monkeypatch.setenv("LIFELONG_CONFIG", str(missing))
    code, _, err = run(capsys, "get", "ll")
    assert (code, err) == (2, f"error: config file {missing}: no such file\n")
    monkeypatch.delenv("LIFELONG_CONFIG")
    code, _, err = run(capsys, "get", "ll", "--context", "prod")
    assert code == 2 and err.startswith("error: --context prod: there is no config file")


def test_config_view_redacts_tokens_and_use_context_switches(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, CONFIG)
    path.chmod(0o640)
    code, out, err = run(capsys, "config", "view", "--config", str(path))
    assert code == 0, err
    shown = yaml.safe_load(out)
    assert shown["users"][0] == {"name": "admin", "user": {"token": "REDACTED"}}
    assert shown["users"][1] == {"name": "viewer", "user": {"token-file": "viewer.token"}}
    assert shown["clusters"] == CONFIG["clusters"] and shown["current-context"] == "prod-admin"
    assert TOKEN not in out + err

    monkeypatch.setenv("LIFELONG_CONFIG", str(path))
    code, out, _ = run(capsys, "config", "current-context")
    assert (code, out) == (0, "prod-admin\n")
    code, out, _ = run(capsys, "config", "get-contexts")
    assert out.splitlines() == [
        "CURRENT   NAME           CLUSTER   USER     NAMESPACE",
        "*         prod-admin     prod      admin    team-a",
        "          local-viewer   local     viewer",
    ]
    code, out, _ = run(capsys, "config", "use-context", "local-viewer")
    assert (code, out) == (0, 'Switched to context "local-viewer".\n')
    assert yaml.safe_load(path.read_text()) == {**CONFIG, "current-context": "local-viewer"}
    assert path.stat().st_mode & 0o777 == 0o640  # the file keeps its mode (rewritten, not widened)
    assert connection().server == "http://127.0.0.1:9300"
    code, _, err = run(capsys, "config", "use-context", "nope")
    assert code == 2 and "no context named 'nope'" in err
    assert yaml.safe_load(path.read_text())["current-context"] == "local-viewer"


def test_the_context_namespace_is_the_default_namespace(tmp_path: Path) -> None:
    """``-n`` wins over the context's namespace; without either it is ``default``."""
    import argparse

    from lifelong.client.api import from_args

    path = write(tmp_path, CONFIG)
    for namespace, context, expected in (
        (None, None, "team-a"),
        ("x", None, "x"),
        (None, "local-viewer", "default"),
    ):
        args = argparse.Namespace(server="http://h:1", config=str(path), context=context, namespace=namespace)
        with from_args(args):
            assert args.namespace == expected
