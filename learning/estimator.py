"""The adapter between ``LifelongLearning`` and a user's estimator.

Who uses it: ``lifelong.learning.lifelong`` builds one adapter per task group from the
``seen_estimator`` it was given. Two kinds of estimator are taken:

- scikit-learn style (``fit``, ``predict``, optionally ``predict_proba`` and ``partial_fit``):
  each task gets a fresh clone; models are saved with joblib; a warm start (``warm_from``)
  begins from another task's fitted model where the estimator allows it: ``partial_fit``
  epochs on a copy of the fitted source (MLPClassifier, SGDClassifier: the new labels must be
  among the source's classes), else ``warm_start=True`` with the same classes, else a plain fit;
- Sedna style (``train(train_data)``, ``predict``, ``save(model_path)``, ``load(model_url)``), as
  Sedna's examples write them: a class or an instance, called as they expect.

Model files are pickles (joblib): load only models your own jobs wrote.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np

from lifelong.learning.datasources import BaseDataSource

log = logging.getLogger(__name__)

__all__ = ["EstimatorAdapter", "WarmStart"]


class WarmStart:
    """How a warm start went: ``partial_fit``, ``warm_start`` or ``none`` (a plain fit)."""

    PARTIAL_FIT = "partial_fit"
    WARM_START = "warm_start"
    NONE = "none"


def _is_sklearn(obj: Any) -> bool:
    return hasattr(obj, "fit") and hasattr(obj, "predict")


class EstimatorAdapter:
    """One task group's model, made from the user's ``seen_estimator``."""

    def __init__(self, estimator: Any, epochs: int = 50) -> None:
        self.template = estimator
        self.model: Any = None
        self.epochs = epochs
        self.warm_start = WarmStart.NONE

    # -- making and fitting --------------------------------------------------------------------
    def _fresh(self) -> Any:
        template = self.template
        if isinstance(template, type):
            return template()
        if _is_sklearn(template):
            try:
                from sklearn.base import clone

                return clone(template)
            except (ImportError, TypeError, RuntimeError):
                return copy.deepcopy(template)
        return copy.deepcopy(template)

    @property
    def sklearn(self) -> bool:
        return _is_sklearn(self.model if self.model is not None else self._fresh())

    def fit(self, x: np.ndarray, y: np.ndarray, **kwargs: Any) -> dict[str, Any]:
        """Fit a fresh model on ``x``, ``y``; the result of the estimator's train, if any."""
        self.model = self._fresh()
        self.warm_start = WarmStart.NONE
        if _is_sklearn(self.model):
            self.model.fit(x, y, **kwargs)
            return {}
        data = BaseDataSource.from_arrays(x, y)
        res = self.model.train(train_data=data, **kwargs)
        return res if isinstance(res, dict) else {}

    def warm_from(self, source: EstimatorAdapter, x: np.ndarray, y: np.ndarray) -> str:
        """Fit on ``x``, ``y`` starting from ``source``'s fitted model where the estimator allows;
        returns how (``WarmStart``)."""
        src = source.model
        if not (_is_sklearn(src) and hasattr(src, "classes_")):
            self.fit(x, y)
            return self.warm_start
        known = {_key(c) for c in src.classes_}
        labels = {_key(c) for c in np.unique(y)}
        if hasattr(src, "partial_fit") and labels <= known:
            model = copy.deepcopy(src)
            for _ in range(self.epochs):
                model.partial_fit(x, y)
            self.model = model
            self.warm_start = WarmStart.PARTIAL_FIT
            return self.warm_start
        params = src.get_params() if hasattr(src, "get_params") else {}
        if "warm_start" in params and labels == known:
            model = copy.deepcopy(src)
            model.set_params(warm_start=True)
            model.fit(x, y)
            self.model = model
            self.warm_start = WarmStart.WARM_START
            return self.warm_start
        self.fit(x, y)
        return self.warm_start

    # -- using ---------------------------------------------------------------------------------
    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(x))

    def predict_proba(self, x: np.ndarray) -> np.ndarray | None:
        """Class probabilities, or None when the estimator has none."""
        fn = getattr(self.model, "predict_proba", None)
        if fn is None:
            return None
        try:
            return np.asarray(fn(x))
        except (AttributeError, NotImplementedError):
            return None

    @property
    def classes(self) -> list[Any] | None:
        classes = getattr(self.model, "classes_", None)
        if classes is None:
            return None
        return [_key(c) for c in classes]

    def score(self, x: np.ndarray, y: np.ndarray) -> float:
        """Accuracy on ``x``, ``y`` (0.0 with no samples)."""
        if len(y) == 0:
            return 0.0
        pred = self.predict(x)
        return float(np.mean([_key(a) == _key(b) for a, b in zip(pred, y, strict=True)]))

    # -- files ---------------------------------------------------------------------------------
    def save(self, path: Path) -> Path:
        """Write the model to ``path`` (joblib for scikit-learn style, the estimator's own
        ``save`` otherwise)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        if _is_sklearn(self.model):
            import joblib

            joblib.dump(self.model, path)
        else:
            self.model.save(model_path=str(path))
        return path

    def load(self, path: Path) -> EstimatorAdapter:
        fresh = self._fresh()
        if _is_sklearn(fresh):
            import joblib

            self.model = joblib.load(path)
        else:
            loaded = fresh.load(model_url=str(path))
            self.model = loaded if loaded is not None and hasattr(loaded, "predict") else fresh
        return self


def _key(value: Any) -> Any:
    """A label as a plain Python value, so that 3, np.int64(3) and "3" compare as labels do."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if number.is_integer() else value
    return value
