"""``lifelong.learning``: the lifelong-learning worker library (Sedna's API, defaults that work).

Who uses it: the workers of a LifelongLearningJob, e.g. ``examples/lifelong/``. It imports only
``lifelong.common`` of this project (an import-linter contract in pyproject.toml says so), and
numpy, scikit-learn and joblib (the ``examples`` extra), httpx and tenacity. The guide is
docs/writing-workers.md, "The lifelong-learning library".
"""

from lifelong.learning import algorithms
from lifelong.learning.config import BaseConfig, Context
from lifelong.learning.datasources import BaseDataSource, CSVDataParse, TxtDataParse
from lifelong.learning.estimator import EstimatorAdapter
from lifelong.learning.knowledge import KBError, KnowledgeBase, parse_index
from lifelong.learning.lifelong import Knowledge, LifelongLearning
from lifelong.learning.registry import ClassFactory, ClassType, UnknownMethod
from lifelong.learning.reporting import SampleShipper, post_worker_info, sample_id

__all__ = [
    "BaseConfig",
    "BaseDataSource",
    "CSVDataParse",
    "ClassFactory",
    "ClassType",
    "Context",
    "EstimatorAdapter",
    "KBError",
    "Knowledge",
    "KnowledgeBase",
    "LifelongLearning",
    "SampleShipper",
    "TxtDataParse",
    "UnknownMethod",
    "algorithms",
    "parse_index",
    "post_worker_info",
    "sample_id",
]
