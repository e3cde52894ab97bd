"""Where knowledge goes: the knowledge base (KB), over HTTP or in a local directory.

Who uses it: ``LifelongLearning`` uploads each task group's model and samples
(``PUT /knowledgebase/v1/files/{path}``), posts the task index (``POST /knowledgebase/v1/index``)
and per-task scores (``POST /knowledgebase/v1/metrics``), and reads an index and its files back
by URL. docs/knowledge-base.md describes the routes and the index (``lifelong.common.kb``).

``KB_SERVER`` chooses: ``http(s)://...`` is the KB service (``KB_TOKEN`` as a bearer token when
set); ``file:///dir`` or empty is a local directory with the same layout (``files/{path}``,
``index/{ns}/{name}/{N}.json``, ``metrics/{ns}/{name}.json``; empty: ``{OUTPUT_URL}/kb``), so the
library works without a KB service. URLs it hands out are absolute: an ``http`` URL of the KB
or a local path.

Reading an index accepts the versioned ``TaskIndex`` and Sedna's older flat form
``{"task_groups": [...], "extractor": ...}`` (JSON); a pickled index is refused, as reading one
would run code.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pydantic

from lifelong.common.kb import TaskIndex
from lifelong.learning.datasources import local_path
from lifelong.learning.transport import HttpError, request

log = logging.getLogger(__name__)

__all__ = ["KBError", "KnowledgeBase", "parse_index"]

BASE = "/knowledgebase"


class KBError(RuntimeError):
    """The knowledge base refused or could not be reached; the message names the call."""


def _is_http(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def _safe_rel(path: str) -> str:
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise KBError(f"file path {path!r} must be relative and stay inside the knowledge base")
    return "/".join(parts)


class KnowledgeBase:
    """The KB at ``server`` (an ``http(s)`` URL) or in the directory ``root``."""

    def __init__(self, server: str = "", *, root: Path | None = None, token: str | None = None) -> None:
        self.server = server.rstrip("/") if _is_http(server) else ""
        self.token = token
        if not self.server:
            if root is None:
                root = local_path(server) if server else Path(os.environ.get("OUTPUT_URL") or "/tmp") / "kb"
            self.root: Path | None = root
        else:
            self.root = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> KnowledgeBase:
        return cls(os.environ.get("KB_SERVER", ""), token=os.environ.get("KB_TOKEN") or None)

    @property
    def local(self) -> bool:
        return self.root is not None

    def describe(self) -> str:
        return self.server or f"the local directory {self.root}"

    # -- calls -----------------------------------------------------------------------------------
    def _call(self, method: str, route: str, **kwargs: Any) -> Any:
        url = f"{self.server}{BASE}{route}"
        try:
            resp = request(method, url, token=self.token, **kwargs)
        except HttpError as exc:
            raise KBError(f"knowledge base {method} {route}: {exc}") from None
        if resp.status_code >= 300:
            try:
                reason = resp.json().get("error", resp.text[:200])
            except (ValueError, AttributeError):
                reason = resp.text[:200]
            raise KBError(f"knowledge base {method} {route}: {resp.status_code} {reason}")
        try:
            return resp.json()
        except ValueError:
            raise KBError(f"knowledge base {method} {route}: the answer is not JSON") from None

    def put_file(self, path: str, data: bytes) -> str:
        """Store ``data`` at ``path`` (relative); its absolute URL."""
        rel = _safe_rel(path)
        if self.root is not None:
            target = self.root / "files" / rel
            _write(target, data)
            return str(target)
        answer = self._call("PUT", f"/v1/files/{rel}", content=data)
        return self._absolute(str(answer.get("url") or f"{BASE}/v1/files/{rel}"))

    def post_index(self, index: TaskIndex) -> str:
        """Store a new version of ``index`` (its ``job`` is required); the version's URL."""
        if not index.job:
            raise KBError("a task index needs its job ('namespace/name')")
        body = index.to_json()
        if self.root is None:
            answer = self._call("POST", "/v1/index", json=body)
            return self._absolute(str(answer["url"]))
        ns, _, name = index.job.partition("/")
        folder = self.root / "index" / _safe_rel(ns) / _safe_rel(name)
        with self._lock:
            folder.mkdir(parents=True, exist_ok=True)
            versions = [int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit()]
            target = folder / f"{max(versions, default=0) + 1}.json"
            _write(target, json.dumps(body, indent=1).encode())
        return str(target)

    def post_metrics(
        self, job: str, round_: int | None, stage: str, scores: dict[str, dict[str, float]]
    ) -> None:
        body = {"job": job, "round": round_, "stage": stage, "scores": scores}
        if self.root is None:
            self._call("POST", "/v1/metrics", json=body)
            return
        ns, _, name = job.partition("/")
        target = self.root / "metrics" / _safe_rel(ns) / f"{_safe_rel(name)}.json"
        with self._lock:
            try:
                kept = json.loads(target.read_text())
            except (OSError, ValueError):
                kept = {"scores": {}}
            kept.setdefault("scores", {}).setdefault(str(round_), {}).update(scores)
            _write(target, json.dumps(kept, indent=1).encode())

    def read(self, url: str) -> bytes:
        """The bytes at ``url``: an http(s) URL (with the token for this KB's server), a
        ``file://`` URL or a local path."""
        if _is_http(url):
            token = self.token if self.server and url.startswith(self.server) else None
            try:
                resp = request("GET", url, token=token)
            except HttpError as exc:
                raise KBError(str(exc)) from None
            if resp.status_code != 200:
                raise KBError(f"GET {url}: {resp.status_code}")
            return resp.content
        try:
            return local_path(url).read_bytes()
        except OSError as exc:
            raise KBError(f"cannot read {url}: {exc.strerror or exc}") from None

    def read_index(self, url: str) -> TaskIndex:
        return parse_index(self.read(url), url)

    def _absolute(self, url: str) -> str:
        if _is_http(url):
            return url
        parsed = urlparse(self.server)
        return f"{parsed.scheme}://{parsed.netloc}{url if url.startswith('/') else '/' + url}"


def _write(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def parse_index(data: bytes, where: str = "the task index") -> TaskIndex:
    """A task index from JSON bytes: the versioned form, or Sedna's older flat one."""
    if data[:1] == b"\x80":
        raise KBError(f"{where} is a pickle (Sedna's index.pkl): only JSON task indexes are read")
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise KBError(f"{where} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise KBError(f"{where} must be a JSON object")
    if "task_groups" in value and "seen_task" not in value:
        value = {"seen_task": _flat_task_set(value)}
    try:
        return TaskIndex.model_validate(value)
    except pydantic.ValidationError as exc:
        errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise KBError(f"{where} is not a task index: {errors}") from None


def _flat_group(group: dict[str, Any]) -> dict[str, Any]:
    """A flat index's task group: its model may be a URL or Sedna's ``{"model": URL, "result"}``."""
    out = dict(group)
    out["entry"] = str(group.get("entry"))
    model = group.get("model")
    if isinstance(model, str):
        out["model"] = {"url": model}
    elif isinstance(model, dict) and "url" not in model and isinstance(model.get("model"), str):
        given = model.get("result")
        result: dict[str, Any] = given if isinstance(given, dict) else {}
        metrics = {
            k: float(v) for k, v in result.items() if isinstance(v, int | float) and not isinstance(v, bool)
        }
        out["model"] = {"url": model["model"], "metrics": metrics}
    tasks = []
    for task in group.get("tasks") or []:
        if isinstance(task, dict):
            tasks.append({"entry": str(task.get("entry")), "attrs": task.get("attrs") or {}})
    out["tasks"] = tasks
    if isinstance(out.get("samples"), list | dict):
        out["samples"] = 0
    return out


def _flat_task_set(value: dict[str, Any]) -> dict[str, Any]:
    """Sedna's flat ``{"task_groups", "extractor"}``: the extractor may be a mapping of
    attribute values to a group's entry or position, or absent (then the groups' entries are
    their own keys)."""
    groups = [_flat_group(g) for g in value.get("task_groups") or [] if isinstance(g, dict)]
    entries = [str(g.get("entry")) for g in groups if isinstance(g, dict)]
    extractor = value.get("extractor")
    mapping: dict[str, str] = {}
    attributes: list[str] = []
    if isinstance(extractor, dict) and ("map" in extractor or "attributes" in extractor):
        return {"task_groups": groups, "extractor": extractor}
    if isinstance(extractor, dict):
        for key, target in extractor.items():
            if isinstance(target, int) and 0 <= target < len(entries):
                mapping[str(key)] = entries[target]
            elif isinstance(target, str):
                mapping[str(key)] = target
    else:
        mapping = {e: e for e in entries}
    attributes = list(value.get("attributes") or [])
    return {"task_groups": groups, "extractor": {"attributes": attributes, "map": mapping}}
