"""A ``KnowledgeBase`` (``lifelong.cloud.kb.base``) for the GM's tests.

Who uses it: the tests of the GM's knowledge-base parts (the ``UnseenSamples`` and
``LabelledSamples`` controllers, the labelled samples' delivery, ``status.knowledgeBase``, the
GM API's ``kb`` routes and ``lifelong kb``). ``make_kb(path)`` gives the real
``LocalKnowledgeBase`` on a directory; ``SwitchableKB`` wraps a knowledge base so that a test
can make it raise ``KBUnavailable``, as one that cannot be reached would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lifelong.cloud.kb.base import KBUnavailable, KnowledgeBase
from lifelong.cloud.kb.service import LocalKnowledgeBase


class SwitchableKB:
    """``inner`` as it is while ``available``; otherwise every call of its methods raises
    ``KBUnavailable`` and changes nothing. ``calls`` counts the calls by method name."""

    def __init__(self, inner: KnowledgeBase) -> None:
        self.inner = inner
        self.available = True
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.inner, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            if not self.available:
                raise KBUnavailable("the knowledge base cannot be reached (a test switched it off)")
            return method(*args, **kwargs)

        return call


@contextlib.contextmanager
def make_kb(path: Path) -> Iterator[LocalKnowledgeBase]:
    """The knowledge base the GM's tests use: the KB service's own, on ``path``, closed after."""
    base = LocalKnowledgeBase.open(path)
    try:
        yield base
    finally:
        base.close()


def task_index(job: str, round_: int = 1) -> dict[str, Any]:
    """A task index of two task groups, ``summer`` (accuracy 0.91) and ``winter`` (transferred from
    summer, ratio 0.7), one task each, as a training worker posts it."""
    groups = [
        ("summer", 40, {"accuracy": 0.91}, [0, 1], None),
        ("winter", 12, {"accuracy": 0.5}, [1, 2], {"from": "summer", "ratio": 0.7}),
    ]
    return {
        "job": job,
        "round": round_,
        "seen_task": {
            "task_groups": [
                {
                    "entry": name,
                    "tasks": [{"entry": f"{name}-a", "attrs": {"season": name}, "samples": samples}],
                    "samples": samples,
                    "model": {"url": f"models/{name}.pkl", "metrics": metrics, "classes": classes},
                    **({"transfer": transfer} if transfer else {}),
                }
                for name, samples, metrics, classes, transfer in groups
            ]
        },
    }
