"""The geometry of the console's server-rendered plots (no JavaScript plotting library).

Who calls it: ``cloud/console/pages.py``; the templates (``job.html``, ``kb.html``) draw the
shapes these functions place, so every text in them is escaped by Jinja2.

* ``timeline``: a job's conditions, one lane per round (round 0: before the first training);
* ``plot``: a value per (round, task), one series per task;
* ``heatmap``: the R[round][task] matrix, one cell per value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Matrix = Mapping[int, Mapping[str, float]]
"""``values[round][task]``: R[round][task]."""
Measures = Mapping[int, Mapping[str, str]] | None
"""``measures[round][task]``: what each value of a ``Matrix`` is (``"eval test_accuracy"``)."""

LANE, BOX, GAP, LEFT, TOP = 26, 18, 3, 70, 8
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
TYPE_COLOURS = {
    "Waiting": "#bbbbbb",
    "Ready": "#9ecae1",
    "Starting": "#6baed6",
    "Running": "#3182bd",
    "Completed": "#31a354",
    "Failed": "#de2d26",
}


@dataclass(frozen=True)
class Box:
    x: float
    y: float
    w: float
    h: float
    fill: str
    attrs: dict[str, str]
    title: str


def timeline(conditions: Sequence[tuple[int, Mapping[str, Any]]]) -> dict[str, Any]:
    """Lanes of (round, condition) pairs: ``{"lanes": [{round, y, boxes}], "width", "height"}``."""
    lanes: dict[int, list[Mapping[str, Any]]] = {}
    for round_, cond in conditions:
        lanes.setdefault(round_, []).append(cond)
    out = []
    widest = 0
    for row, (round_, conds) in enumerate(sorted(lanes.items())):
        y = TOP + row * LANE
        boxes = []
        for i, cond in enumerate(conds):
            stage, kind = str(cond.get("stage", "")), str(cond.get("type", ""))
            when = str(cond.get("lastTransitionTime") or "")
            why = " ".join(str(cond.get(k) or "") for k in ("reason", "message")).strip()
            boxes.append(
                Box(
                    LEFT + i * (BOX + GAP),
                    y,
                    BOX,
                    BOX,
                    TYPE_COLOURS.get(kind, "#999999"),
                    {"data-stage": stage.lower(), "data-type": kind},
                    f"round {round_}: {stage}/{kind} {when} {why}".strip(),
                )
            )
        widest = max(widest, len(conds))
        out.append({"round": round_, "y": y, "label_y": y + BOX - 4, "boxes": boxes})
    return {
        "lanes": out,
        "width": LEFT + max(widest, 1) * (BOX + GAP) + 10,
        "height": TOP * 2 + max(len(out), 1) * LANE,
        "left": LEFT,
    }


def _colour(task_index: int) -> str:
    return PALETTE[task_index % len(PALETTE)]


def _measure(measures: Measures, round_: int, task: str) -> str:
    return (measures or {}).get(round_, {}).get(task, "")


def plot(values: Matrix, tasks: Sequence[str], measures: Measures = None) -> dict[str, Any]:
    """Points and lines of ``values[round][task]``: x by round, y by value (0..1, or 0..max);
    ``measures[round][task]`` names what each value is."""
    width, height, left, right, top, bottom = 560, 240, 44, 140, 10, 28
    rounds = sorted(values)
    top_value = max([1.0, *(v for r in rounds for v in values[r].values())])
    span_x = max(len(rounds) - 1, 1)

    def x_of(i: int) -> float:
        return left + (width - left - right) * (i / span_x if len(rounds) > 1 else 0.5)

    def y_of(v: float) -> float:
        return top + (height - top - bottom) * (1 - max(v, 0.0) / top_value)

    series = []
    for t, task in enumerate(tasks):
        points = [
            {
                "x": x_of(i),
                "y": y_of(values[r][task]),
                "round": r,
                "value": values[r][task],
                "measure": _measure(measures, r, task),
            }
            for i, r in enumerate(rounds)
            if task in values[r]
        ]
        series.append(
            {
                "task": task,
                "colour": _colour(t),
                "points": points,
                "line": " ".join(f"{p['x']:.1f},{p['y']:.1f}" for p in points),
                "legend_y": top + 14 * t + 10,
            }
        )
    return {
        "series": series,
        "width": width,
        "height": height,
        "legend_x": width - right + 10,
        "axis": {"x0": left, "x1": width - right, "y0": height - bottom, "y1": top},
        "ticks": [{"x": x_of(i), "round": r} for i, r in enumerate(rounds)],
        "top_value": top_value,
        "empty": not any(s["points"] for s in series),
    }


def heatmap(values: Matrix, tasks: Sequence[str], measures: Measures = None) -> dict[str, Any]:
    """Cells of ``values[round][task]`` (rows: rounds, columns: tasks), darker for higher;
    ``measures[round][task]`` names what each value is."""
    cell_w, cell_h, left, top = 76, 24, 70, 60
    rounds = sorted(values)
    all_values = [v for r in rounds for v in values[r].values()]
    low, high = (min(all_values), max(all_values)) if all_values else (0.0, 1.0)
    if high <= 1.0 and low >= 0.0:
        low, high = 0.0, 1.0
    cells = []
    for row, r in enumerate(rounds):
        for col, task in enumerate(tasks):
            if task not in values[r]:
                continue
            v = values[r][task]
            share = 0.0 if high == low else (v - low) / (high - low)
            light = round(95 - 60 * share)
            cells.append(
                {
                    "x": left + col * cell_w,
                    "y": top + row * cell_h,
                    "w": cell_w - 2,
                    "h": cell_h - 2,
                    "round": r,
                    "task": task,
                    "value": v,
                    "measure": _measure(measures, r, task),
                    "fill": f"hsl(210, 70%, {light}%)",
                    "text": "#ffffff" if light < 60 else "#000000",
                }
            )
    return {
        "cells": cells,
        "rows": [{"round": r, "y": top + i * cell_h + cell_h / 2 + 4} for i, r in enumerate(rounds)],
        "columns": [{"task": t, "x": left + i * cell_w + cell_w / 2} for i, t in enumerate(tasks)],
        "width": left + max(len(tasks), 1) * cell_w + 10,
        "height": top + max(len(rounds), 1) * cell_h + 10,
        "cell_w": cell_w,
        "left": left,
        "top": top,
    }
