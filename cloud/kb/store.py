"""The knowledge base's tables, in one SQLite file (``lifelong.common.sqlite.Database``).

Who uses it: ``lifelong.cloud.kb.service`` (``LocalKnowledgeBase``), and only it; the HTTP app
and the GM go through the service. docs/knowledge-base.md describes the tables for users.

Sedna's tables, with Sedna's meanings, scoped to a job (Sedna's KB holds one index for all; ours
holds one per job, so two jobs' task group ``0`` are two rows):

``task_groups``     job, name (the group's entry), deploy (0/1: ``/update/status``), sample_num,
                    task_num (as of the latest index, not summed over uploads), and ours:
                    transfer_from, transfer_ratio (where its model started from, the index's
                    ``transfer``)
``tasks``           job, name (the task's entry), task_attr (JSON: the attribute values that
                    define it)
``task_models``     group, model_url, format, metrics (JSON), classes (JSON), index_version,
                    is_current (1 for the model the group's latest index names)
``task_relations``  group, task, transfer_ratio (the task's share of its group, 1/task_num)
``samples``         job, url, descr, data_type (0 train, 1 eval, 2 hard example), sample_num
``task_samples``    task, sample: which sample set belongs to which task

Ours:

``task_index``      every version of each job's task index (JSON, ``lifelong.common.kb.TaskIndex``)
``metrics``         per job, round, stage and task group: the scores a round reported (JSON)
``unseen``          unseen samples: job, node, id, row/attrs/predicted/confidence/task (JSON),
                    observed_at, received, label (JSON), labelled_at, delivered_at; unique (job, id)

Labels and predicted classes are kept as JSON text, so the label ``1`` and the label ``"1"``
stay two labels. Times are RFC 3339 UTC with microseconds (they sort as text).

Thread-safe through the ``Database`` (one connection behind a lock); each method is one
transaction, durable when it returns (``synchronous`` FULL).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lifelong.common.kb import TaskIndex, UnseenSample
from lifelong.common.samples import Label
from lifelong.common.sqlite import Database

MAX_UNSEEN_PER_JOB = 200_000
"""Unseen samples one job may hold; beyond, new ones are refused (``StoreFull``) until some are
labelled, delivered and pruned, or the job's samples deleted."""

DATA_TRAIN, DATA_EVAL, DATA_HARD = 0, 1, 2
"""``samples.data_type``, as Sedna numbers them."""

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS task_groups (
    id INTEGER PRIMARY KEY AUTOINCREMENT, job TEXT NOT NULL, name TEXT NOT NULL,
    deploy INTEGER NOT NULL DEFAULT 0, sample_num INTEGER NOT NULL DEFAULT 0,
    task_num INTEGER NOT NULL DEFAULT 0, transfer_from TEXT, transfer_ratio REAL,
    UNIQUE (job, name))""",
    """CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT, job TEXT NOT NULL, name TEXT NOT NULL,
    task_attr TEXT NOT NULL DEFAULT '{}', created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
    UNIQUE (job, name))""",
    """CREATE TABLE IF NOT EXISTS task_models (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id INTEGER NOT NULL REFERENCES task_groups(id),
    model_url TEXT NOT NULL DEFAULT '', format TEXT NOT NULL DEFAULT '',
    metrics TEXT NOT NULL DEFAULT '{}', classes TEXT,
    index_version INTEGER, is_current INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL,
    UNIQUE (group_id, model_url))""",
    """CREATE TABLE IF NOT EXISTS task_relations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id INTEGER NOT NULL REFERENCES task_groups(id),
    task_id INTEGER NOT NULL REFERENCES tasks(id),
    transfer_ratio REAL NOT NULL DEFAULT 0, UNIQUE (group_id, task_id))""",
    """CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT, job TEXT NOT NULL, url TEXT NOT NULL DEFAULT '',
    descr TEXT NOT NULL DEFAULT '', data_type INTEGER NOT NULL DEFAULT 0,
    sample_num INTEGER NOT NULL DEFAULT 0, updated_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS task_samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sample_id INTEGER NOT NULL REFERENCES samples(id),
    task_id INTEGER NOT NULL REFERENCES tasks(id), UNIQUE (sample_id, task_id))""",
    """CREATE TABLE IF NOT EXISTS task_index (
    job TEXT NOT NULL, version INTEGER NOT NULL, round INTEGER, body TEXT NOT NULL,
    created_at TEXT NOT NULL, PRIMARY KEY (job, version))""",
    """CREATE TABLE IF NOT EXISTS metrics (
    job TEXT NOT NULL, round INTEGER NOT NULL, stage TEXT NOT NULL, task TEXT NOT NULL,
    scores TEXT NOT NULL, recorded_at TEXT NOT NULL, PRIMARY KEY (job, round, stage, task))""",
    """CREATE TABLE IF NOT EXISTS unseen (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, job TEXT NOT NULL, node TEXT NOT NULL, id TEXT NOT NULL,
    row TEXT NOT NULL, attrs TEXT NOT NULL, predicted TEXT, confidence REAL, task TEXT,
    observed_at TEXT, received TEXT NOT NULL, label TEXT, labelled_at TEXT, delivered_at TEXT,
    UNIQUE (job, id))""",
    "CREATE INDEX IF NOT EXISTS unseen_undelivered ON unseen (labelled_at) "
    "WHERE label IS NOT NULL AND delivered_at IS NULL",
    "CREATE INDEX IF NOT EXISTS unseen_predicted ON unseen (job, predicted)",
)


class StoreFull(Exception):
    """A bound of the store was reached (see ``MAX_UNSEEN_PER_JOB``)."""


class UnknownSamples(Exception):
    """Sample ids the job does not hold, or holds delivered; ``ids`` names them."""

    def __init__(self, message: str, ids: Sequence[str]) -> None:
        super().__init__(message)
        self.ids = list(ids)


@dataclass(frozen=True, slots=True)
class SampleRow:
    """One row of ``unseen``, its JSON columns decoded."""

    job: str
    node: str
    sample: UnseenSample
    received: str
    label: Label | None
    labelled_at: str | None
    delivered_at: str | None


def now() -> str:
    """The current UTC time as RFC 3339 with microseconds (sorts as text)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


_SAMPLE_COLUMNS = (
    "job, node, id, row, attrs, predicted, confidence, task, observed_at, received, label, "
    "labelled_at, delivered_at"
)


def _sample_row(row: tuple[Any, ...]) -> SampleRow:
    job, node, sid, data, attrs, predicted, confidence, task, observed, received, label, at, gone = row
    sample = UnseenSample(
        id=sid,
        row=json.loads(data),
        attrs=json.loads(attrs),
        predicted=None if predicted is None else json.loads(predicted),
        confidence=confidence,
        task=task,
        observed_at=observed,
    )
    return SampleRow(job, node, sample, received, None if label is None else json.loads(label), at, gone)


class KBStore:
    """The tables of the module docstring on one ``Database``."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.execute_all(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- the task index --------------------------------------------------------------------
    def add_index(self, job: str, index: TaskIndex) -> int:
        """Store ``index`` as the job's next version and record its task groups, tasks, models
        (the named ones become current), relations and sample counts; return the version."""
        stamp = now()
        with self.db.transaction():
            row = self.db.fetchone("SELECT MAX(version) FROM task_index WHERE job = ?", (job,))
            version = int(row[0] or 0) + 1 if row else 1
            body = index.to_json()
            body["job"] = job
            self.db.execute(
                "INSERT INTO task_index (job, version, round, body, created_at) VALUES (?, ?, ?, ?, ?)",
                (job, version, index.round, _dumps(body), stamp),
            )
            for group in [*index.seen_task.task_groups, *index.unseen_task.task_groups]:
                self._record_group(job, version, group, stamp)
        return version

    def _record_group(self, job: str, version: int, group: Any, stamp: str) -> None:
        transfer = group.transfer
        self.db.execute(
            """INSERT INTO task_groups (job, name, deploy, sample_num, task_num, transfer_from,
            transfer_ratio) VALUES (?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (job, name) DO UPDATE SET deploy = excluded.deploy,
            sample_num = excluded.sample_num, task_num = excluded.task_num,
            transfer_from = excluded.transfer_from, transfer_ratio = excluded.transfer_ratio""",
            (
                job,
                group.entry,
                int(group.deployed),
                group.samples,
                len(group.tasks),
                transfer.source if transfer else None,
                transfer.ratio if transfer else None,
            ),
        )
        gid = self._group_id(job, group.entry)
        if group.model is not None:
            model = group.model
            self.db.execute("UPDATE task_models SET is_current = 0 WHERE group_id = ?", (gid,))
            self.db.execute(
                """INSERT INTO task_models (group_id, model_url, format, metrics, classes,
                index_version, is_current, created_at) VALUES (?, ?, ?, ?, ?, ?, 1, ?)
                ON CONFLICT (group_id, model_url) DO UPDATE SET format = excluded.format,
                metrics = excluded.metrics, classes = excluded.classes,
                index_version = excluded.index_version, is_current = 1""",
                (
                    gid,
                    model.url,
                    model.format,
                    _dumps(model.metrics),
                    None if model.classes is None else _dumps(model.classes),
                    version,
                    stamp,
                ),
            )
        share = 1.0 / len(group.tasks) if group.tasks else 0.0
        for task in group.tasks:
            self.db.execute(
                """INSERT INTO tasks (job, name, task_attr, created_at, updated_at) VALUES (?, ?, ?, ?, ?)
                ON CONFLICT (job, name) DO UPDATE SET task_attr = excluded.task_attr,
                updated_at = excluded.updated_at""",
                (job, task.entry, _dumps(task.attrs), stamp, stamp),
            )
            tid = self._task_id(job, task.entry)
            self.db.execute(
                """INSERT INTO task_relations (group_id, task_id, transfer_ratio) VALUES (?, ?, ?)
                ON CONFLICT (group_id, task_id) DO UPDATE SET transfer_ratio = excluded.transfer_ratio""",
                (gid, tid, share),
            )
            self.db.execute("UPDATE task_relations SET transfer_ratio = ? WHERE group_id = ?", (share, gid))
            self._set_train_samples(job, tid, task.samples, stamp)

    def _set_train_samples(self, job: str, tid: int, count: int, stamp: str) -> None:
        """The task's training sample set: one row, its count as the latest index gives it."""
        found = self.db.fetchone(
            """SELECT s.id FROM samples s JOIN task_samples ts ON ts.sample_id = s.id
            WHERE ts.task_id = ? AND s.data_type = ?""",
            (tid, DATA_TRAIN),
        )
        if found is not None:
            self.db.execute(
                "UPDATE samples SET sample_num = ?, updated_at = ? WHERE id = ?", (count, stamp, found[0])
            )
            return
        cur = self.db.execute(
            "INSERT INTO samples (job, data_type, sample_num, updated_at) VALUES (?, ?, ?, ?)",
            (job, DATA_TRAIN, count, stamp),
        )
        self.db.execute("INSERT INTO task_samples (sample_id, task_id) VALUES (?, ?)", (cur.lastrowid, tid))

    def _group_id(self, job: str, name: str) -> int:
        row = self.db.fetchone("SELECT id FROM task_groups WHERE job = ? AND name = ?", (job, name))
        assert row is not None
        return int(row[0])

    def _task_id(self, job: str, name: str) -> int:
        row = self.db.fetchone("SELECT id FROM tasks WHERE job = ? AND name = ?", (job, name))
        assert row is not None
        return int(row[0])

    def index(self, job: str, version: int | None = None) -> dict[str, Any] | None:
        """The job's task index of ``version`` (the latest without one), or None."""
        if version is None:
            row = self.db.fetchone(
                "SELECT body FROM task_index WHERE job = ? ORDER BY version DESC LIMIT 1", (job,)
            )
        else:
            row = self.db.fetchone(
                "SELECT body FROM task_index WHERE job = ? AND version = ?", (job, version)
            )
        return None if row is None else dict(json.loads(row[0]))

    def index_version(self, job: str) -> int | None:
        row = self.db.fetchone("SELECT MAX(version) FROM task_index WHERE job = ?", (job,))
        return None if row is None or row[0] is None else int(row[0])

    def set_deploy(self, names: Sequence[str], deploy: bool, job: str | None = None) -> int:
        """Mark the task groups named deployed (or not), in ``job`` or in every job; how many."""
        if not names:
            return 0
        marks = ",".join("?" * len(names))
        sql = f"UPDATE task_groups SET deploy = ? WHERE name IN ({marks})"
        params: list[Any] = [int(deploy), *names]
        if job is not None:
            sql += " AND job = ?"
            params.append(job)
        with self.db.transaction():
            return int(self.db.execute(sql, params).rowcount)

    def task_groups(self, job: str) -> list[dict[str, Any]]:
        """The job's task groups with their tasks, current model (metrics, classes) and transfer."""
        out: list[dict[str, Any]] = []
        groups = self.db.fetchall(
            """SELECT id, name, deploy, sample_num, task_num, transfer_from, transfer_ratio
            FROM task_groups WHERE job = ? ORDER BY id""",
            (job,),
        )
        for gid, name, deploy, sample_num, task_num, source, ratio in groups:
            tasks = self.db.fetchall(
                """SELECT t.name, t.task_attr, r.transfer_ratio,
                COALESCE((SELECT SUM(s.sample_num) FROM task_samples ts JOIN samples s ON s.id = ts.sample_id
                          WHERE ts.task_id = t.id AND s.data_type = 0), 0)
                FROM task_relations r JOIN tasks t ON t.id = r.task_id WHERE r.group_id = ? ORDER BY t.id""",
                (gid,),
            )
            model = self.db.fetchone(
                """SELECT model_url, format, metrics, classes, index_version FROM task_models
                WHERE group_id = ? AND is_current = 1""",
                (gid,),
            )
            out.append(
                {
                    "entry": name,
                    "deployed": bool(deploy),
                    "sampleNum": sample_num,
                    "taskNum": task_num,
                    "tasks": [
                        {"entry": t, "attrs": json.loads(a), "transferRatio": r, "samples": n}
                        for t, a, r, n in tasks
                    ],
                    "model": None
                    if model is None
                    else {
                        "url": model[0],
                        "format": model[1],
                        "metrics": json.loads(model[2]),
                        "classes": None if model[3] is None else json.loads(model[3]),
                        "indexVersion": model[4],
                    },
                    "transfer": None if source is None else {"from": source, "ratio": ratio},
                }
            )
        return out

    def task_names(self) -> list[str]:
        """Every task group's name, across jobs (Sedna's ``/query``)."""
        return [r[0] for r in self.db.fetchall("SELECT DISTINCT name FROM task_groups ORDER BY name")]

    # -- metrics ---------------------------------------------------------------------------
    def add_metrics(
        self, job: str, round_: int, stage: str, scores: Mapping[str, Mapping[str, float]]
    ) -> None:
        stamp = now()
        with self.db.transaction():
            for task, values in scores.items():
                self.db.execute(
                    """INSERT INTO metrics (job, round, stage, task, scores, recorded_at)
                    VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (job, round, stage, task) DO UPDATE
                    SET scores = excluded.scores, recorded_at = excluded.recorded_at""",
                    (job, round_, stage, task, _dumps(dict(values)), stamp),
                )

    def metrics(self, job: str) -> list[tuple[int, str, str, dict[str, float]]]:
        """(round, stage, task, scores) of the job, by round, stage and task."""
        rows = self.db.fetchall(
            "SELECT round, stage, task, scores FROM metrics WHERE job = ? ORDER BY round, stage, task", (job,)
        )
        return [(int(r), s, t, dict(json.loads(v))) for r, s, t, v in rows]

    # -- unseen samples --------------------------------------------------------------------
    def add_unseen(self, job: str, node: str, samples: Sequence[UnseenSample]) -> int:
        """Store the samples not stored yet (by (job, id)); how many were new."""
        stamp = now()
        with self.db.transaction():
            row = self.db.fetchone("SELECT COUNT(*) FROM unseen WHERE job = ?", (job,))
            held = int(row[0]) if row else 0
            fresh = [
                s
                for s in samples
                if self.db.fetchone("SELECT 1 FROM unseen WHERE job = ? AND id = ?", (job, s.id)) is None
            ]
            unique = list({s.id: s for s in fresh}.values())
            if held + len(unique) > MAX_UNSEEN_PER_JOB:
                raise StoreFull(
                    f"job {job} holds {held} unseen samples; {len(unique)} more would pass the bound of "
                    f"{MAX_UNSEEN_PER_JOB} (label and deliver some first)"
                )
            for s in unique:
                self.db.execute(
                    f"""INSERT INTO unseen ({_SAMPLE_COLUMNS}) VALUES
                    (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL)""",
                    (
                        job,
                        node,
                        s.id,
                        _dumps(s.row),
                        _dumps(s.attrs),
                        None if s.predicted is None else _dumps(s.predicted),
                        s.confidence,
                        s.task,
                        s.observed_at,
                        stamp,
                    ),
                )
        return len(unique)

    def samples(
        self,
        job: str,
        *,
        state: str = "all",
        predicted: Label | None = None,
        limit: int = 1000,
        after: str | None = None,
    ) -> list[SampleRow]:
        where = ["job = ?"]
        params: list[Any] = [job]
        if state == "unlabelled":
            where.append("label IS NULL")
        elif state == "labelled":
            where.append("label IS NOT NULL AND delivered_at IS NULL")
        elif state == "delivered":
            where.append("delivered_at IS NOT NULL")
        if predicted is not None:
            where.append("predicted = ?")
            params.append(_dumps(predicted))
        if after is not None:
            where.append("seq > COALESCE((SELECT seq FROM unseen WHERE job = ? AND id = ?), 0)")
            params += [job, after]
        sql = f"SELECT {_SAMPLE_COLUMNS} FROM unseen WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"
        return [_sample_row(r) for r in self.db.fetchall(sql, [*params, limit])]

    def label(self, job: str, labels: Mapping[str, Label]) -> int:
        """Label the samples named; all or nothing: an unknown or delivered id raises
        ``UnknownSamples`` naming them."""
        stamp = now()
        with self.db.transaction():
            missing: list[str] = []
            delivered: list[str] = []
            for sid in labels:
                row = self.db.fetchone("SELECT delivered_at FROM unseen WHERE job = ? AND id = ?", (job, sid))
                if row is None:
                    missing.append(sid)
                elif row[0] is not None:
                    delivered.append(sid)
            if missing:
                raise UnknownSamples(f"job {job} has no unseen sample {', '.join(missing[:10])}", missing)
            if delivered:
                raise UnknownSamples(
                    "samples already delivered to their Dataset cannot be relabelled: "
                    + ", ".join(delivered[:10]),
                    delivered,
                )
            for sid, value in labels.items():
                self.db.execute(
                    "UPDATE unseen SET label = ?, labelled_at = ? WHERE job = ? AND id = ?",
                    (_dumps(value), stamp, job, sid),
                )
        return len(labels)

    def label_predicted(self, job: str, predicted: Label, label: Label) -> int:
        with self.db.transaction():
            cur = self.db.execute(
                """UPDATE unseen SET label = ?, labelled_at = ? WHERE job = ? AND predicted = ?
                AND label IS NULL""",
                (_dumps(label), now(), job, _dumps(predicted)),
            )
            return int(cur.rowcount)

    def undelivered(self, limit: int = 1000) -> list[SampleRow]:
        rows = self.db.fetchall(
            f"""SELECT {_SAMPLE_COLUMNS} FROM unseen WHERE label IS NOT NULL AND delivered_at IS NULL
            ORDER BY labelled_at, seq LIMIT ?""",
            (limit,),
        )
        return [_sample_row(r) for r in rows]

    def mark_delivered(self, job: str, ids: Sequence[str]) -> int:
        stamp = now()
        changed = 0
        with self.db.transaction():
            for sid in dict.fromkeys(ids):
                cur = self.db.execute(
                    """UPDATE unseen SET delivered_at = ? WHERE job = ? AND id = ?
                    AND label IS NOT NULL AND delivered_at IS NULL""",
                    (stamp, job, sid),
                )
                changed += int(cur.rowcount)
        return changed

    def sample_counts(self, job: str) -> tuple[int, int]:
        """(unseen samples, labelled ones) of the job; delivered ones count as labelled."""
        row = self.db.fetchone(
            "SELECT COUNT(*), COUNT(label) FROM unseen WHERE job = ?",
            (job,),
        )
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def known(self, job: str) -> bool:
        """Whether the KB holds anything of the job (an index, metrics or samples)."""
        for table in ("task_index", "metrics", "unseen", "task_groups"):
            if self.db.fetchone(f"SELECT 1 FROM {table} WHERE job = ? LIMIT 1", (job,)) is not None:
                return True
        return False
