"""The worker's environment: Sedna's variables, read when asked (never cached at import).

Who uses it: ``LifelongLearning`` and the example workers (``examples/lifelong/``). The GM's
``cloud/controllers/lifelonglearning/workerenv.py`` sets these variables; docs/writing-workers.md
has the table. ``Context.get_parameters`` and ``BaseConfig`` keep the names of Sedna's
``sedna.common.config`` so that a Sedna worker's calls read the same values.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

__all__ = ["BaseConfig", "Context", "parse_param", "round_of"]

_WORKER_ROUND = re.compile(r"-(?:train|eval|deploy)-(\d+)(?:-retry\d+)?$")


class Context:
    """Parameters from the environment: ``get_parameters("x")`` reads ``x``, then ``X``."""

    @staticmethod
    def get_parameters(param: str, default: Any = None) -> Any:
        value = os.environ.get(param) or os.environ.get(str(param).upper())
        return value if value else default


class _Env:
    """A class attribute that reads an environment variable each time it is read."""

    def __init__(self, name: str, default: str | None = None) -> None:
        self.name = name
        self.default = default

    def __get__(self, obj: object, owner: type | None = None) -> str | None:
        return os.environ.get(self.name) or self.default


class BaseConfig:
    """Sedna's ``BaseConfig`` names, each read from the environment when accessed."""

    lc_server = _Env("LC_SERVER", "http://127.0.0.1:9100")
    kb_server = _Env("KB_SERVER", "")
    kb_token = _Env("KB_TOKEN")
    original_dataset_url = _Env("ORIGINAL_DATASET_URL")
    train_dataset_url = _Env("TRAIN_DATASET_URL")
    test_dataset_url = _Env("TEST_DATASET_URL")
    output_url = _Env("OUTPUT_URL", "/tmp")
    model_urls = _Env("MODEL_URLS", "")
    cloud_kb_index = _Env("CLOUD_KB_INDEX", "")
    namespace = _Env("NAMESPACE", "default")
    worker_name = _Env("WORKER_NAME", "")
    job_name = _Env("JOB_NAME", "lifelong")

    @staticmethod
    def has_completed_initial_training() -> bool:
        return str(os.environ.get("HAS_COMPLETED_INITIAL_TRAINING", "false")).strip().lower() == "true"


def round_of(worker_name: str | None) -> int | None:
    """The round in a worker's name ``{job}-{stage}-{round}[-retry{n}]``, else None."""
    match = _WORKER_ROUND.search(worker_name or "")
    return int(match.group(1)) if match else None


def parse_param(value: Any) -> dict[str, Any]:
    """A method's ``param``: a mapping, a JSON object string (as Sedna's examples pass it) or
    nothing. Anything else is refused with the value's type named."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"param is not a JSON object: {exc}") from None
        if isinstance(parsed, dict):
            return parsed
        raise ValueError(f"param must be a JSON object, got {type(parsed).__name__}")
    raise ValueError(f"param must be a mapping or a JSON object string, got {type(value).__name__}")
