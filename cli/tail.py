"""``lifelong tail``: print the bus traffic live, decoded (msgpack or JSON), one line a message.

Registered by the ``lifelong`` dispatcher (``cli/__main__.py``) through ``register``. It is a
tool for operators, not part of ``lifelong.common``'s pure modules (nothing of ``common``,
``cloud``, ``edge`` or ``broker`` may import it; ``pyproject.toml`` checks that). It is an
ordinary MQTT subscriber built on :class:`lifelong.common.bus.BusClient`: it subscribes to
``{prefix}/#`` (or ``{prefix}/node/{node}/#`` with ``--node``), decodes every payload with
:mod:`lifelong.common.codec` and prints::

    17:05:01.123  edge-1  up    report  LifelongLearningJob default/job1  seq=12  {"event": "ready", ...}

``-o json`` prints each message as one JSON object instead (``topic``, ``retained`` and the
decoded ``envelope``), for scripts. A payload that does not decode is shown with the reason,
never dropped silently. The formatting is pure (``describe_message``), so it is unit-tested
without a broker. Exit status: 0 after ``--count`` messages or Ctrl-C; 1 when the broker
cannot be reached within ``--connect-timeout`` seconds; 2 for a usage mistake.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from typing import Any

from lifelong.common.bus import BusClient, Credentials, ReconnectPolicy, TLSParameters
from lifelong.common.codec import decode_map
from lifelong.common.errors import ConfigError, LifelongError, ProtocolError
from lifelong.common.secretfile import read_secret_file
from lifelong.common.topics import DEFAULT_PREFIX, Topics, check_prefix, check_segment

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"


class BrokerUnreachable(LifelongError):
    exit_code = 1


def _body_text(body: Any, width: int) -> str:
    text = json.dumps(body, separators=(", ", ": "), default=str, ensure_ascii=False)
    if width > 0 and len(text) > width:
        text = text[: max(width - 3, 0)] + "..."
    return text


def describe_message(
    topic: str,
    payload: bytes,
    retained: bool,
    topics: Topics,
    *,
    kind: str | None = None,
    output: str = "text",
    width: int = 160,
) -> str | None:
    """The line ``tail`` prints for one message, or None when ``kind`` filters it out.

    ``kind`` matches the topic's kind (``LifelongLearningJob``, ``Dataset``, ``Worker``,
    ``_ctl`` for control messages, ``presence``), case-insensitively.
    """
    try:
        parsed = topics.parse(topic)
        t_node = parsed.node or "gm"
        t_kind = "presence" if parsed.is_presence else (parsed.kind or "")
        t_dir = parsed.direction.value if parsed.direction is not None else "-"
    except ProtocolError:
        t_node, t_kind, t_dir = "?", "?", "?"
    if kind is not None and t_kind.lower() != kind.lower():
        return None
    try:
        env: dict[str, Any] | None = decode_map(payload)
        error = ""
    except ProtocolError as exc:
        env, error = None, str(exc)
    if output == "json":
        record: dict[str, Any] = {"topic": topic, "retained": retained}
        if env is not None:
            record["envelope"] = env
        else:
            record["error"] = error
        return json.dumps(record, default=str, ensure_ascii=False)
    ts = env.get("ts") if env is not None else None
    stamp = (
        time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int((ts % 1) * 1000):03d}"
        if isinstance(ts, (int, float))
        else time.strftime("%H:%M:%S") + ".???"
    )
    flag = "  (retained)" if retained else ""
    if env is None:
        return f"{stamp}  {t_node}  {t_dir:<4}  !! {topic}: {error}{flag}"
    op = str(env.get("op", "?"))
    if t_kind == "presence":
        what = ""
    elif t_kind == "_ctl":
        what = t_kind
    else:
        what = f"{env.get('kind', t_kind)} {env.get('ns', '')}/{env.get('name', '')}"
    marks = []
    if env.get("seq") is not None:
        marks.append(f"seq={env['seq']}")
    if env.get("rv") is not None:
        marks.append(f"rv={env['rv']}")
    parts = [
        stamp,
        t_node,
        f"{t_dir:<4}",
        f"{op:<8}",
        what,
        " ".join(marks),
        _body_text(env.get("body"), width),
    ]
    return "  ".join(part for part in parts if part) + flag


def cmd_tail(args: argparse.Namespace) -> int:
    try:
        prefix = check_prefix(args.prefix)
        if args.node:
            check_segment(args.node, "node")
    except ProtocolError as exc:
        raise ConfigError(str(exc)) from None
    if args.count is not None and args.count < 1:
        raise ConfigError("--count must be at least 1")
    topics = Topics(prefix)
    bus_log = logging.getLogger("lifelong.common.bus")
    if not bus_log.isEnabledFor(logging.DEBUG):
        bus_log.setLevel(logging.ERROR)  # reconnect warnings would interleave with the traffic
    topic_filter = topics.node_filter(args.node) if args.node else f"{prefix}/#"
    password = read_secret_file(args.password_file) if args.password_file else None
    credentials = Credentials(args.username, password) if args.username else None
    tls = TLSParameters(ca_certs=args.tls_ca_file) if args.tls_ca_file else None
    printed = 0
    done = threading.Event()
    lock = threading.Lock()

    def on_message(topic: str, payload: bytes, retained: bool) -> None:
        nonlocal printed
        line = describe_message(
            topic, payload, retained, topics, kind=args.kind, output=args.output, width=args.width
        )
        if line is None:
            return
        with lock:
            if done.is_set():
                return
            print(line, flush=True)
            printed += 1
            if args.count is not None and printed >= args.count:
                done.set()

    client = BusClient(
        client_id=f"lifelong-tail-{os.getpid()}",
        address=args.broker,
        credentials=credentials,
        tls=tls,
        reconnect=ReconnectPolicy(initial=0.5, maximum=5.0),
    )
    client.start()
    try:
        if not client.wait_connected(args.connect_timeout):
            reason = client.last_error
            raise BrokerUnreachable(
                f"cannot reach the broker at {args.broker} within {args.connect_timeout:g}s"
                + (f": {reason}" if reason else "")
            )
        client.subscribe(topic_filter, on_message)
        print(f"# tailing {topic_filter} on {args.broker} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        client.close()
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "tail",
        help="print the bus traffic live, decoded (msgpack or JSON)",
        description=(
            "Subscribe to the lifelong topics and print every message decoded, one line each: "
            "time, node, direction, operation, resource, seq/rv and body."
        ),
    )
    p.add_argument(
        "--broker", default=DEFAULT_BROKER, help=f"mqtt://HOST:PORT or mqtts:// (default {DEFAULT_BROKER})"
    )
    p.add_argument("--node", help="only this node's topics")
    p.add_argument(
        "--kind", help="only this kind: LifelongLearningJob, Dataset, Worker, _ctl (control) or presence"
    )
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"topic prefix (default {DEFAULT_PREFIX})")
    p.add_argument("--username", help="broker user name (the GM's user sees every node)")
    p.add_argument("--password-file", help="file holding the broker password")
    p.add_argument("--tls-ca-file", help="CA certificate for mqtts://")
    p.add_argument(
        "-o", "--output", choices=["text", "json"], default="text", help="line format (default text)"
    )
    p.add_argument(
        "--width", type=int, default=160, help="cut bodies longer than this, 0 for never (default 160)"
    )
    p.add_argument("--count", type=int, help="exit after printing this many messages")
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        help="give up when not connected by then (default 10 s)",
    )
    p.set_defaults(handler=cmd_tail)
