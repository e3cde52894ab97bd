"""Settings of the Local Controller, and where each one comes from.

Called by ``commands`` (CLI) to build one :class:`LCSettings`, which is then passed down
explicitly to every component (no globals, no env reads elsewhere). Precedence, highest
first: command-line flag > environment variable ``LIFELONG_LC_<NAME>`` > YAML config file
(``--config``, keys as in the first column) > default.

| key                      | flag                    | env LIFELONG_LC_…        | default          |
|--------------------------|-------------------------|--------------------------|------------------|
| node                     | --node                  | NODE                     | (required)       |
| broker                   | --broker                | BROKER                   | mqtt://127.0.0.1:1883 |
| state_dir                | --state-dir             | STATE_DIR                | /var/lib/lifelong-lc |
| prefix                   | --prefix                | PREFIX                   | lifelong/v1      |
| codec                    | --codec                 | CODEC                    | msgpack          |
| username                 | --username              | USERNAME                 | the node name    |
| password_file            | --password-file         | PASSWORD_FILE            | none (anonymous) |
| tls_ca_file              | --tls-ca-file           | TLS_CA_FILE              | system CAs (mqtts:// only) |
| tls_cert                 | --tls-cert              | TLS_CERT                 | no client cert   |
| tls_key                  | --tls-key               | TLS_KEY                  | key in tls_cert  |
| keepalive                | --keepalive             | KEEPALIVE                | 30 s             |
| worker_api_host          | --worker-api-host       | WORKER_API_HOST          | 127.0.0.1        |
| worker_api_port          | --worker-api-port       | WORKER_API_PORT          | 9100 (0: off)    |
| metrics_host             | --metrics-host          | METRICS_HOST             | 127.0.0.1        |
| metrics_port             | --metrics-port          | METRICS_PORT             | 9101 (0: off)    |
| poll_seconds             | --poll-seconds          | POLL_SECONDS             | 5 s              |
| outbox_max_depth         | --outbox-max-depth      | OUTBOX_MAX_DEPTH         | 100000 reports   |
| outbox_window            | --outbox-window         | OUTBOX_WINDOW            | 200 in flight    |
| ack_timeout_seconds      | --ack-timeout-seconds   | ACK_TIMEOUT_SECONDS      | 30 s             |
| max_payload              | --max-payload           | MAX_PAYLOAD              | 262144 bytes     |
| worker_stop_grace_seconds| --worker-stop-grace-seconds | WORKER_STOP_GRACE_SECONDS | 10 s        |
| stop_workers_on_exit     | --stop-workers-on-exit  | STOP_WORKERS_ON_EXIT     | false            |
| sync                     | --sync                  | SYNC                     | full             |
| images                   | (config file only)      | (config file only)       | none             |

Why these defaults: ``poll_seconds`` 5 s keeps an idle edge cheap while reacting well inside
any sensible ``checkPeriodSeconds``; the outbox holds 100,000 reports (a few tens of MB) —
about a week of a busy node offline; 200 in flight keeps a slow link busy without flooding
the broker on reconnect; an unacked report is resent after 30 s (a GM restart); workers keep
running when the LC stops (a restarted LC adopts them) unless ``stop_workers_on_exit``;
``sync=full`` makes every committed report survive a power cut, ``normal`` only a crash.
The password is read from a file so it never shows in ``ps`` or the journal.

``images`` maps a container image to what the standalone runtime runs in its place: the
image's ``entrypoint`` and ``cmd`` (Docker's ENTRYPOINT and CMD, exec form), its
``workingDir`` (WORKDIR) and ``env`` (ENV). A key is an image as a template writes it
(``repo:tag``), or the repository without tag or digest to serve every tag::

    images:
      kubeedge/sedna-example-lifelong-learning-atcii-classifier:
        entrypoint: ["/opt/sedna/venv/bin/python"]
        workingDir: /opt/sedna/examples/atcii
        env: {PYTHONPATH: /opt/sedna/lib}

It is a map, so only the config file sets it. ``lifelong.edge.workers`` applies it with
Kubernetes' rules for ``command`` and ``args`` (docs/writing-workers.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pydantic

from lifelong.common.errors import ValidationError
from lifelong.common.secretfile import read_secret_file

ENV_PREFIX = "LIFELONG_LC_"
AGENT = "lifelong-lc/0.1.0"


class ImageEntry(pydantic.BaseModel):
    """What the standalone runtime runs for one image (its Dockerfile's ENTRYPOINT, CMD,
    WORKDIR and ENV). Empty lists mean the image has none."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, strict=True)

    entrypoint: list[str] = []
    cmd: list[str] = []
    workingDir: str | None = None  # the Kubernetes/Docker spelling, as in templates
    env: dict[str, str] = {}


def image_repository(image: str) -> str:
    """``image`` without its tag or digest: ``host:5000/a/b:v1@sha256:..`` -> ``host:5000/a/b``."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def find_image(images: Mapping[str, ImageEntry], image: str) -> tuple[str, ImageEntry] | None:
    """The entry of ``image``: its exact key, else its repository without tag or digest."""
    for key in (image, image_repository(image)):
        if key in images:
            return key, images[key]
    return None


def _images(raw: Any, source: str) -> dict[str, ImageEntry]:
    if not isinstance(raw, dict):
        raise ValidationError([("images", "must be a map of image to its entry")], source=source)
    out: dict[str, ImageEntry] = {}
    for image, entry in raw.items():
        if not isinstance(image, str) or not image:
            raise ValidationError([("images", f"{image!r} is not an image name")], source=source)
        try:
            out[image] = ImageEntry.model_validate(entry if entry is not None else {})
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            path = f"images[{image}]" + (f".{where}" if where else "")
            raise ValidationError([(path, first["msg"])], source=source) from None
    return out


@dataclass(frozen=True)
class LCSettings:
    """Everything the LC needs to know; one instance per process, passed down explicitly."""

    node: str
    broker: str = "mqtt://127.0.0.1:1883"
    state_dir: Path = Path("/var/lib/lifelong-lc")
    prefix: str = "lifelong/v1"
    codec: str = "msgpack"
    username: str | None = None
    password_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_cert: Path | None = None  # this node's client certificate (PEM), mqtts:// only
    tls_key: Path | None = None  # its private key (PEM), when not in tls_cert
    keepalive: int = 30
    worker_api_host: str = "127.0.0.1"
    worker_api_port: int = 9100
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9101
    poll_seconds: float = 5.0
    outbox_max_depth: int = 100_000
    outbox_window: int = 200
    ack_timeout_seconds: float = 30.0
    max_payload: int = 256 * 1024
    worker_stop_grace_seconds: float = 10.0
    stop_workers_on_exit: bool = False
    sync: str = "full"
    images: Mapping[str, ImageEntry] = field(default_factory=dict)

    @property
    def db_path(self) -> Path:
        return self.state_dir / "lc.db"

    @property
    def workers_dir(self) -> Path:
        return self.state_dir / "workers"

    def password(self) -> str | None:
        if self.password_file is None:
            return None
        return read_secret_file(self.password_file, "password_file")


_TYPES: dict[str, type] = {
    "node": str,
    "broker": str,
    "state_dir": Path,
    "prefix": str,
    "codec": str,
    "username": str,
    "password_file": Path,
    "tls_ca_file": Path,
    "tls_cert": Path,
    "tls_key": Path,
    "keepalive": int,
    "worker_api_host": str,
    "worker_api_port": int,
    "metrics_host": str,
    "metrics_port": int,
    "poll_seconds": float,
    "outbox_max_depth": int,
    "outbox_window": int,
    "ack_timeout_seconds": float,
    "max_payload": int,
    "worker_stop_grace_seconds": float,
    "stop_workers_on_exit": bool,
    "sync": str,
}
_CHOICES = {"codec": ("msgpack", "json"), "sync": ("full", "normal")}


def _convert(key: str, value: Any, source: str) -> Any:
    kind = _TYPES[key]
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if kind is int and isinstance(value, bool):
            raise ValueError(value)
        converted = kind(value)
    except (TypeError, ValueError):
        raise ValidationError([(key, f"{value!r} is not a valid {kind.__name__}")], source=source) from None
    if key in _CHOICES and converted not in _CHOICES[key]:
        raise ValidationError([(key, f"must be one of {', '.join(_CHOICES[key])}")], source=source)
    return converted


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``lifelong lc`` flags; every one defaults to None so that lower layers show through."""
    for key, kind in _TYPES.items():
        flag = "--" + key.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, dest=key, action="store_const", const=True, default=None)
        else:
            parser.add_argument(flag, dest=key, default=None, metavar=key.upper())
    parser.add_argument("--config", dest="config", default=None, help="YAML config file")


def load(
    args: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> LCSettings:
    """Merge the layers into settings; raises ``ValidationError`` naming the bad field."""
    values: dict[str, Any] = {}
    env = os.environ if env is None else env
    if config_file is None and env.get(ENV_PREFIX + "CONFIG"):
        config_file = Path(env[ENV_PREFIX + "CONFIG"])
    if config_file is not None:
        import yaml  # here, not at the top: an LC without a config file never loads PyYAML

        try:
            raw = yaml.safe_load(Path(config_file).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValidationError([("config", str(exc))], source=str(config_file)) from None
        if not isinstance(raw, dict):
            raise ValidationError([("", "must be a map of settings")], source=str(config_file))
        for key, value in raw.items():
            if key == "images":
                values[key] = _images(value, str(config_file))
                continue
            if key not in _TYPES:
                raise ValidationError([(str(key), "unknown setting")], source=str(config_file))
            values[key] = _convert(key, value, str(config_file))
    for key in _TYPES:
        name = ENV_PREFIX + key.upper()
        if name in env:
            values[key] = _convert(key, env[name], "environment " + name)
    for key, value in (args or {}).items():
        if key in _TYPES and value is not None:
            values[key] = _convert(key, value, "command line")
    if not values.get("node"):
        raise ValidationError([("node", "is required (--node or LIFELONG_LC_NODE)")], source="settings")
    from lifelong.common.topics import check_prefix, check_segment

    try:
        check_segment(values["node"], "node")
        check_prefix(values.get("prefix", LCSettings.prefix))
    except Exception as exc:
        raise ValidationError([("node", str(exc))], source="settings") from None
    known = {f.name for f in fields(LCSettings)}
    return dataclasses.replace(
        LCSettings(node=values["node"]), **{k: v for k, v in values.items() if k in known}
    )
