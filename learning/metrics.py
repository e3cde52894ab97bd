"""Lifelong-learning metrics over a score matrix R[round][task], as KubeEdge Ianvs names them.

Who uses it: ``make eval`` (``benchmarks/lifelong_eval.py``) and ``lifelong demo``, to score this
system and the baselines alike; docs/lifelong-learning.md explains each metric with the results.
Pure Python, no numpy: it imports nothing of ours.

The matrix. ``R[k][j]`` is the score (accuracy, in [0, 1]) of the system after training round
``k`` on the test set of task ``j``; ``tasks[j]`` names task ``j``. A cell is ``None`` while task
``j`` has not been seen yet (it is learned in a later round). The round at which task ``j`` is
first learned is, unless the caller says otherwise with ``first``, the first round whose cell
for ``j`` is not ``None``; a caller that also measured a task before it was learned (to plot it)
passes ``first`` explicitly.

The metrics, with T the last round:

- ``average_accuracy``: the mean of the last round's scores over the tasks seen (Ianvs'
  ``task_avg_acc``).
- ``bwt`` (backward transfer): for each task learned before T, its score at T minus its score
  just after it was learned, averaged over those tasks. Negative means later rounds made the
  system worse on earlier tasks (forgetting); positive means they helped. This is the form of
  Lopez-Paz and Ranzato (GEM, 2017); Ianvs averages the round-to-round change of every cell
  over all rounds and tasks instead, which also counts a task's own learning as "backward".
- ``fwt`` (forward transfer): for each task first learned after round 0 (when there is knowledge
  to transfer from), its score right after it was learned minus a baseline score for that task,
  averaged. The baseline is the score of the same task learned without transfer (the eval uses
  a model of that task alone trained from scratch on the same samples). Positive means what the
  system already knew made the new task better learned. Ianvs compares a task's score before it
  is learned with the first round's; with tasks that are new domains that measures chance, not
  transfer, so this module measures at the round of learning against a no-transfer baseline.
- ``forgetting`` (forgetting rate): for each task learned before T, the largest drop from any
  earlier round's score to its score at T (never below 0), averaged (Chaudhry et al. 2018;
  Ianvs' ``forget_rate``).
- ``samples_transfer_ratio``: the share of inferred samples sent to the cloud as unseen (Ianvs
  divides by ``inferred + 1`` to dodge zero; here no samples gives 0.0).

Each function returns ``None`` when there is nothing to average (e.g. BWT with one round).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "Matrix",
    "average_accuracy",
    "bwt",
    "first_rounds",
    "forgetting",
    "format_matrix",
    "fwt",
    "samples_transfer_ratio",
    "summarize",
]

Matrix = Sequence[Sequence[float | None]]


def _check(r: Matrix) -> int:
    """The number of tasks of ``r``; ValueError when it is empty or ragged."""
    if not r:
        raise ValueError("the score matrix has no rounds")
    width = len(r[0])
    for k, row in enumerate(r):
        if len(row) != width:
            raise ValueError(f"round {k} of the score matrix has {len(row)} scores, round 0 has {width}")
    return width


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def first_rounds(r: Matrix) -> list[int | None]:
    """For each task, the first round with a score (``None`` if the task never has one)."""
    width = _check(r)
    out: list[int | None] = []
    for j in range(width):
        out.append(next((k for k, row in enumerate(r) if row[j] is not None), None))
    return out


def _firsts(r: Matrix, first: Sequence[int | None] | None) -> list[int | None]:
    width = _check(r)
    if first is None:
        return first_rounds(r)
    if len(first) != width:
        raise ValueError(f"first names {len(first)} tasks, the score matrix has {width}")
    for j, f in enumerate(first):
        if f is not None and not 0 <= f < len(r):
            raise ValueError(f"first[{j}] = {f} is not a round of the matrix (0..{len(r) - 1})")
    return list(first)


def average_accuracy(r: Matrix, round_index: int = -1) -> float | None:
    """The mean score over the tasks that have one in round ``round_index`` (the last by default)."""
    _check(r)
    return _mean([s for s in r[round_index] if s is not None])


def bwt(r: Matrix, first: Sequence[int | None] | None = None) -> float | None:
    """Backward transfer: mean over tasks learned before the last round of R[T][j] - R[first_j][j]."""
    firsts = _firsts(r, first)
    last = len(r) - 1
    diffs: list[float] = []
    for j, f in enumerate(firsts):
        if f is None or f >= last:
            continue
        now, then = r[last][j], r[f][j]
        if now is not None and then is not None:
            diffs.append(now - then)
    return _mean(diffs)


def fwt(
    r: Matrix, baseline: Sequence[float | None], first: Sequence[int | None] | None = None
) -> float | None:
    """Forward transfer: mean over tasks first learned after round 0 of R[first_j][j] - baseline[j]."""
    firsts = _firsts(r, first)
    if len(baseline) != len(firsts):
        raise ValueError(f"the baseline has {len(baseline)} scores, the score matrix has {len(firsts)} tasks")
    diffs: list[float] = []
    for j, f in enumerate(firsts):
        if f is None or f == 0:
            continue
        score, base = r[f][j], baseline[j]
        if score is not None and base is not None:
            diffs.append(score - base)
    return _mean(diffs)


def forgetting(r: Matrix, first: Sequence[int | None] | None = None) -> float | None:
    """Forgetting rate: mean over tasks learned before the last round of max(0, max_k<T R[k][j] - R[T][j])."""
    firsts = _firsts(r, first)
    last = len(r) - 1
    drops: list[float] = []
    for j, f in enumerate(firsts):
        if f is None or f >= last:
            continue
        now = r[last][j]
        if now is None:
            continue
        earlier = [s for row in r[f:last] if (s := row[j]) is not None]
        drops.append(max(0.0, max(earlier, default=now) - now))
    return _mean(drops)


def samples_transfer_ratio(inferred: int, transferred: int) -> float:
    """The share of ``inferred`` samples that were sent to the cloud as unseen (0.0 when none)."""
    if inferred < 0 or transferred < 0:
        raise ValueError(
            f"sample counts must not be negative (inferred {inferred}, transferred {transferred})"
        )
    return transferred / inferred if inferred else 0.0


def summarize(
    r: Matrix,
    baseline: Sequence[float | None] | None = None,
    first: Sequence[int | None] | None = None,
) -> dict[str, Any]:
    """All the matrix's metrics in one dict (``fwt`` is ``None`` without a baseline), for JSON."""
    return {
        "average_accuracy": average_accuracy(r),
        "bwt": bwt(r, first),
        "fwt": None if baseline is None else fwt(r, baseline, first),
        "forgetting": forgetting(r, first),
    }


def format_matrix(
    r: Matrix,
    tasks: Sequence[str],
    rounds: Sequence[str] | None = None,
    digits: int = 3,
) -> str:
    """R as a text table: one line per round, one column per task, ``-`` for a task not seen yet.

    The last column is the round's average over the tasks it has scores for.
    """
    width = _check(r)
    if len(tasks) != width:
        raise ValueError(f"{len(tasks)} task names for a score matrix of {width} tasks")
    names = list(rounds) if rounds is not None else [f"round {k}" for k in range(len(r))]
    if len(names) != len(r):
        raise ValueError(f"{len(names)} round names for a score matrix of {len(r)} rounds")
    header = ["", *tasks, "average"]
    body: list[list[str]] = []
    for name, row in zip(names, r, strict=True):
        avg = _mean([s for s in row if s is not None])
        cells = ["-" if s is None else f"{s:.{digits}f}" for s in row]
        body.append([name, *cells, "-" if avg is None else f"{avg:.{digits}f}"])
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = []
    for line in [header, *body]:
        first_cell = line[0].ljust(widths[0])
        rest = [cell.rjust(w) for cell, w in zip(line[1:], widths[1:], strict=True)]
        lines.append("  ".join([first_cell, *rest]).rstrip())
    return "\n".join(lines)
