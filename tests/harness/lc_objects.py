"""Sample resources and state-dir readers for LC tests (wire form, camelCase dicts), and the
settings of an LC that never connects (tests that run its control step themselves)."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

NS = "default"


def offline_settings(tmp_path: Path, node: str) -> Any:
    """``LCSettings`` of an LC on ``node`` that never connects: the test runs the control step."""
    from lifelong.edge.config import LCSettings

    return LCSettings(
        node=node,
        broker="mqtt://127.0.0.1:1",
        state_dir=tmp_path / "state",
        worker_api_port=0,
        metrics_port=0,
        sync="normal",
    )


def dataset(name: str, node: str, path: Path, fmt: str = "txt") -> dict[str, Any]:
    return {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"url": str(path), "format": fmt, "nodeName": node},
    }


def cond(stage: str, type_: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    out = {"type": type_, "status": "True", "stage": stage, "lastTransitionTime": "2026-01-01T00:00:00Z"}
    if data is not None:
        out["data"] = json.dumps(data)
    return out


def job(
    name: str,
    node: str,
    ds_name: str,
    out_dir: Path,
    conditions: list[dict[str, Any]],
    *,
    threshold: int = 5,
    train_prob: float = 0.8,
    check_period: int = 1,
) -> dict[str, Any]:
    """A job in wire form; ``check_period`` is its trigger's ``checkPeriodSeconds`` (the API, and
    so the LC, refuses a period below 1)."""

    def template() -> dict[str, Any]:
        return {"spec": {"nodeName": node, "containers": [{"name": "w", "image": "x", "command": ["true"]}]}}

    return {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": "LifelongLearningJob",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "dataset": {"name": ds_name, "trainProb": train_prob},
            "trainSpec": {
                "template": template(),
                "trigger": {
                    "checkPeriodSeconds": check_period,
                    "condition": {"operator": ">", "threshold": threshold, "metric": "num_of_samples"},
                },
            },
            "evalSpec": {"template": template()},
            "deploySpec": {"template": template()},
            "outputDir": str(out_dir),
        },
        "status": {"conditions": conditions},
    }


def worker(
    job_name: str, stage: str, rnd: int, code: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "lifelong.io/v1",
        "kind": "Worker",
        "metadata": {"name": f"{job_name}-{stage.lower()}-{rnd}", "namespace": NS, "labels": {}},
        "spec": {
            "job": job_name,
            "stage": stage,
            "round": rnd,
            "template": {
                "spec": {"containers": [{"name": "w", "command": [sys.executable, "-c"], "args": [code]}]}
            },
            "env": env or {},
        },
    }


class StateReader:
    """Read-only look into an LC's SQLite state (tests only)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "lc.db"

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if not self.path.exists():
            return []
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        try:
            return list(conn.execute(sql, params).fetchall())
        except sqlite3.OperationalError:
            return []
        finally:
            conn.close()

    def resource_rv(self, kind: str, name: str) -> str | None:
        rows = self._rows("SELECT rv FROM resources WHERE kind=? AND ns=? AND name=?", (kind, NS, name))
        return rows[0][0] if rows else None

    def record(self, table: str, name: str) -> dict[str, Any] | None:
        rows = self._rows(f"SELECT data FROM {table} WHERE ns=? AND name=?", (NS, name))
        return json.loads(rows[0][0]) if rows else None

    def outbox_depth(self) -> int:
        rows = self._rows("SELECT count(*) FROM outbox")
        return int(rows[0][0]) if rows else -1
