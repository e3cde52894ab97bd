"""The client's config file (kubeconfig-like) and how the client finds the GM, its token and its CA.

Who calls it: the client's sub-commands (``lifelong.client.commands``, ``lifelong.client.logs``)
through :func:`connection`, and ``lifelong config view|use-context|current-context|get-contexts``.

The file is YAML shaped as kubectl's kubeconfig (docs/operations.md, "The client's config file")::

    clusters:  [{name, cluster: {server, certificate-authority | certificate-authority-data}}]
    users:     [{name, user: {token | token-file}}]
    contexts:  [{name, context: {cluster, user, namespace}}]
    current-context: NAME

Its path: ``--config`` if given, else ``LIFELONG_CONFIG``, else ``~/.config/lifelong/config``
(which may be absent: then the defaults hold). ``--context NAME`` chooses another context than
``current-context``. Relative paths in the file (``certificate-authority``, ``token-file``) are
read from the file's folder, as kubectl does. What wins: ``--server`` over the context's cluster;
``LIFELONG_TOKEN`` over the user's ``token`` over its ``token-file``; ``--namespace`` over the
context's namespace. A malformed file is a :class:`~lifelong.common.errors.ConfigError` (exit 2)
naming the file and the field; a token is never part of any message.
"""

from __future__ import annotations

import base64
import binascii
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lifelong.common.errors import ConfigError

DEFAULT_SERVER = "http://127.0.0.1:9300"
DEFAULT_CONFIG = "~/.config/lifelong/config"
CONFIG_ENV = "LIFELONG_CONFIG"
TOKEN_ENV = "LIFELONG_TOKEN"
REDACTED = "REDACTED"


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Cluster(_Entry):
    server: str = Field(min_length=1)
    certificate_authority: str | None = Field(None, alias="certificate-authority", min_length=1)
    certificate_authority_data: str | None = Field(None, alias="certificate-authority-data", min_length=1)


class User(_Entry):
    token: str | None = Field(None, min_length=1)
    token_file: str | None = Field(None, alias="token-file", min_length=1)


class Context(_Entry):
    cluster: str = Field(min_length=1)
    user: str | None = Field(None, min_length=1)
    namespace: str | None = Field(None, min_length=1)


class _Named(_Entry):
    """A ``{name, KEY: {...}}`` entry (kubeconfig's shape); the flat ``{name, ...}`` is accepted too."""

    key: ClassVar[str] = ""
    name: str = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _lift(cls, data: Any) -> Any:
        if isinstance(data, dict) and cls.key not in data:
            return {"name": data.get("name"), cls.key: {k: v for k, v in data.items() if k != "name"}}
        return data


class NamedCluster(_Named):
    key = "cluster"
    cluster: Cluster


class NamedUser(_Named):
    key = "user"
    user: User


class NamedContext(_Named):
    key = "context"
    context: Context


class ConfigFile(BaseModel):
    """The whole file. Other kubeconfig keys (``apiVersion``, ``kind``, ``preferences``) are allowed."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    clusters: list[NamedCluster] = []
    users: list[NamedUser] = []
    contexts: list[NamedContext] = []
    current_context: str | None = Field(None, alias="current-context")


@dataclass(frozen=True)
class Connection:
    """Where and how the client talks to the GM."""

    server: str
    token: str | None = None
    ca_file: str | None = None
    ca_data: str | None = None  # PEM text
    namespace: str | None = None
    origin: str = "defaults"  # what chose the server, for messages: a context and its file, or a flag

    def __repr__(self) -> str:  # never show the token
        token = None if self.token is None else REDACTED
        return f"Connection(server={self.server!r}, token={token!r}, ca_file={self.ca_file!r})"


def config_path(flag: str | None) -> tuple[Path, bool]:
    """The config file's path and whether it was asked for (then it must exist)."""
    if flag:
        return Path(flag).expanduser(), True
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env).expanduser(), True
    return Path(DEFAULT_CONFIG).expanduser(), False


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def load(path: Path, required: bool) -> ConfigFile | None:
    """The file at ``path`` parsed and checked; None when it is absent and was not asked for."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        if not required:
            return None
        raise ConfigError(f"config file {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it: {exc.strerror}") from None
    import yaml  # here: a client command without a config file does not import PyYAML

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"config file {path}: not valid YAML{where}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path}: must be a mapping (clusters, users, contexts, current-context)"
        )
    try:
        config = ConfigFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_input=False)[0]  # the input may be a token: never shown
        raise ConfigError(f"config file {path}: {_where(first['loc'])}: {first['msg']}") from None
    for field, entries in (
        ("clusters", config.clusters),
        ("users", config.users),
        ("contexts", config.contexts),
    ):
        names = [e.name for e in entries]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise ConfigError(f"config file {path}: {field}: the name {dup!r} is given twice")
    return config


def _relative(path: Path, value: str) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else path.parent / p)


def _read_token(path: Path, index: int, token_file: str) -> str:
    file = _relative(path, token_file)
    field = f"users[{index}].user.token-file"
    try:
        token = Path(file).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"config file {path}: {field}: cannot read {file}: {exc.strerror}") from None
    if not token or any(c.isspace() for c in token):
        raise ConfigError(f"config file {path}: {field}: {file} must hold one token on one line")
    return token


def connection(
    *, server: str | None = None, context: str | None = None, config: str | None = None
) -> Connection:
    """The server, token, CA and namespace the flags, the environment and the config file give."""
    path, required = config_path(config)
    loaded = load(path, required)
    env_token = os.environ.get(TOKEN_ENV) or None
    if loaded is None:
        if context:
            raise ConfigError(f"--context {context}: there is no config file ({path})")
        return Connection(server or DEFAULT_SERVER, env_token, origin="--server" if server else "defaults")
    name = context or loaded.current_context
    if not name:
        return Connection(server or DEFAULT_SERVER, env_token, origin="--server" if server else "defaults")
    ctx = next((c for c in loaded.contexts if c.name == name), None)
    if ctx is None:
        known = ", ".join(c.name for c in loaded.contexts) or "none"
        field = "--context" if context else "current-context"
        raise ConfigError(f"config file {path}: {field}: no context named {name!r} (contexts: {known})")
    i = next((i for i, c in enumerate(loaded.contexts) if c.name == name), 0)
    cluster = next((c.cluster for c in loaded.clusters if c.name == ctx.context.cluster), None)
    if cluster is None:
        raise ConfigError(
            f"config file {path}: contexts[{i}].context.cluster: no cluster named {ctx.context.cluster!r}"
        )
    token = env_token
    if ctx.context.user is not None:
        j = next((j for j, u in enumerate(loaded.users) if u.name == ctx.context.user), None)
        if j is None:
            raise ConfigError(
                f"config file {path}: contexts[{i}].context.user: no user named {ctx.context.user!r}"
            )
        user = loaded.users[j].user
        if token is None and user.token is not None:
            token = user.token
        elif token is None and user.token_file is not None:
            token = _read_token(path, j, user.token_file)
    ca_data = None
    if cluster.certificate_authority_data is not None:
        try:
            ca_data = base64.b64decode(cluster.certificate_authority_data, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            k = next(k for k, c in enumerate(loaded.clusters) if c.name == ctx.context.cluster)
            raise ConfigError(
                f"config file {path}: clusters[{k}].cluster.certificate-authority-data: "
                "not base64 of a PEM file"
            ) from None
    ca_file = (
        None if cluster.certificate_authority is None else _relative(path, cluster.certificate_authority)
    )
    if ca_file is not None and not os.access(ca_file, os.R_OK):
        k = next(k for k, c in enumerate(loaded.clusters) if c.name == ctx.context.cluster)
        raise ConfigError(
            f"config file {path}: clusters[{k}].cluster.certificate-authority: cannot read {ca_file}"
        )
    return Connection(
        server=server or cluster.server,
        token=token,
        ca_file=ca_file,
        ca_data=ca_data,
        namespace=ctx.context.namespace,
        origin="--server" if server else f"context {name!r} of {path}",
    )


def view(config: str | None) -> dict[str, Any]:
    """The config file as ``lifelong config view`` prints it: tokens replaced by ``REDACTED``."""
    path, _ = config_path(config)
    loaded = load(path, True)
    assert loaded is not None
    data = loaded.model_dump(by_alias=True, exclude_none=True)
    for user in data.get("users", []):
        if "token" in user["user"]:
            user["user"]["token"] = REDACTED
    for cluster in data.get("clusters", []):
        if "certificate-authority-data" in cluster["cluster"]:
            cluster["cluster"]["certificate-authority-data"] = "DATA+OMITTED"
    return data


def use_context(config: str | None, name: str) -> Path:
    """Set ``current-context`` to ``name`` (which must exist) in the file, rewritten in place."""
    path, _ = config_path(config)
    loaded = load(path, True)
    assert loaded is not None
    if not any(c.name == name for c in loaded.contexts):
        known = ", ".join(c.name for c in loaded.contexts) or "none"
        raise ConfigError(f"config file {path}: no context named {name!r} (contexts: {known})")
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    data["current-context"] = name
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(data, f, sort_keys=False)
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def contexts(config: str | None) -> tuple[str | None, list[tuple[str, str, str, str]]]:
    """The current context and each context's (name, cluster, user, namespace)."""
    path, _ = config_path(config)
    loaded = load(path, True)
    assert loaded is not None
    return loaded.current_context, [
        (c.name, c.context.cluster, c.context.user or "", c.context.namespace or "") for c in loaded.contexts
    ]


def add_flags(parser: Any, *, namespace: bool = True) -> None:
    """``--server``, ``--config``, ``--context`` (and ``--namespace``) on a client sub-command."""
    parser.add_argument(
        "--server",
        "-s",
        help=f"the GM's API, over the config file's (default: the context's server, else {DEFAULT_SERVER})",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"the client's config file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--context", metavar="NAME", help="the config file's context to use (default: current-context)"
    )
    if namespace:
        parser.add_argument(
            "--namespace", "-n", help="namespace (default: the context's namespace, else default)"
        )
