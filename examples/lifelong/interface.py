"""What the example's three workers share: the data's label and attribute columns, the estimator
and the library's configuration. Plain script code a user could copy (it needs the ``lifelong``
package and scikit-learn)."""

from __future__ import annotations

import os

from sklearn.neural_network import MLPClassifier

from lifelong.learning import LifelongLearning

LABEL = "label"
ATTRIBUTES = ["domain"]
TASK_DEFINITION = {"method": "TaskDefinitionByDataAttr", "param": {"attribute": ATTRIBUTES}}
UNSEEN_SAMPLE_RECOGNITION = {
    "method": "SampleRegonitionDefault",
    # set CONFIDENCE_THRESHOLD to also call a sample unseen when the model is unsure
    "param": {"threshold": os.environ.get("CONFIDENCE_THRESHOLD", "")},
}


def estimator() -> MLPClassifier:
    return MLPClassifier(
        hidden_layer_sizes=(int(os.environ.get("HIDDEN", "32")),),
        max_iter=int(os.environ.get("MAX_ITER", "300")),
        random_state=0,
    )


def job() -> LifelongLearning:
    return LifelongLearning(
        estimator(), task_definition=TASK_DEFINITION, unseen_sample_recognition=UNSEEN_SAMPLE_RECOGNITION
    )
