"""Stage and condition-type names of a LifelongLearningJob, as upstream Sedna spells them.

Shared by the API models (``lifelong.common.api``) and the state machine
(``lifelong.common.statemachine``); nothing else lives here.
"""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    TRAIN = "Train"
    EVAL = "Eval"
    DEPLOY = "Deploy"


class ConditionType(StrEnum):
    WAITING = "Waiting"
    READY = "Ready"
    STARTING = "Starting"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"


STAGE_ORDER: tuple[Stage, ...] = (Stage.TRAIN, Stage.EVAL, Stage.DEPLOY)


def next_stage(stage: Stage) -> Stage:
    """Train -> Eval -> Deploy -> Train."""
    return STAGE_ORDER[(STAGE_ORDER.index(stage) + 1) % len(STAGE_ORDER)]
