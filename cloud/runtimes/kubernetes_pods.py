"""Workers as Pods, in Kubernetes mode: what upstream Sedna's GM does with the job's templates.

What it is for: the lifelong-learning controller starts a stage's worker with
``ensure_worker(spec)`` and stops a job's workers with ``delete_workers``; here a worker is a
Pod in the job's namespace, and a Pod watch reports each Pod's phase to the controller's
handler as a :class:`~lifelong.cloud.runtimes.base.WorkerPhase`. Who calls it: the GM service
in Kubernetes mode (``--store kubernetes``) builds one with a ``CoreV1Api``.

The Pod (:func:`build_pod`, pure, no I/O):

* ``metadata.name`` is ``WorkerSpec.name`` (``{job}-{stage}-{round}``), so creating it twice
  is harmless (409 AlreadyExists counts as done). Upstream uses ``generateName`` and can
  start a stage twice after a GM restart; a fixed name cannot.
* the template's labels and annotations are kept; upstream's labels are added:
  ``lifelonglearningjob.sedna.io/name``, ``…/uid`` and ``…/worker-type`` (``train``, ``eval``,
  ``inference``), and ours, ``lifelong.io/stage`` and ``lifelong.io/round``, which the watch
  reads back.
* an owner reference to the job (``controller: true``), so deleting the job deletes its Pods.
* the template's ``spec`` as given (``nodeName`` included), with the worker environment
  variables merged into every container's ``env``: the user's variables stay, in their
  order; a variable the GM also sets takes the GM's value (upstream appends the GM's after
  the user's, so its value wins there too, but leaves a duplicate name).
* ``restartPolicy`` ``OnFailure`` for Train and Eval when the template leaves it unset, as
  upstream; a Deploy (inference) worker keeps Kubernetes' default (``Always``), as upstream.
* ``hostNetwork: true`` (setting ``host_network``), as upstream forces, so the worker reaches
  the LC's worker API on the edge host's loopback (``LC_SERVER``).

Phases: Pod ``Pending``/``Running``/``Succeeded``/``Failed`` map to the same worker phase; the
exit code is the first non-zero ``terminated.exitCode`` of the containers (else 0 when they
all terminated). Only changes of (phase, exit code) are reported, once per Pod; a Pod's
deletion is not a phase.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lifelong.cloud.runtimes.base import Phase, WorkerPhase, WorkerRuntime, WorkerSpec
from lifelong.common.backoff import exponential_jitter, wait_seconds
from lifelong.common.errors import LifelongError
from lifelong.common.stages import Stage

log = logging.getLogger(__name__)

JOB_API_VERSION = "sedna.io/v1alpha1"
JOB_KIND = "LifelongLearningJob"
LABEL_PREFIX = "lifelonglearningjob.sedna.io/"
LABEL_JOB_NAME = LABEL_PREFIX + "name"
LABEL_JOB_UID = LABEL_PREFIX + "uid"
LABEL_WORKER_TYPE = LABEL_PREFIX + "worker-type"
LABEL_STAGE = "lifelong.io/stage"
LABEL_ROUND = "lifelong.io/round"

#: Upstream's worker types (``TrainPodType``, ``EvalPodType``, ``InferencePodType``).
WORKER_TYPES: Mapping[Stage, str] = {Stage.TRAIN: "train", Stage.EVAL: "eval", Stage.DEPLOY: "inference"}
_PHASES: frozenset[str] = frozenset({"Pending", "Running", "Succeeded", "Failed"})

__all__ = [
    "LABEL_JOB_NAME",
    "LABEL_JOB_UID",
    "LABEL_ROUND",
    "LABEL_STAGE",
    "LABEL_WORKER_TYPE",
    "KubernetesPodsRuntime",
    "PodRuntimeError",
    "PodsRuntimeSettings",
    "build_pod",
    "phase_of_pod",
]


class PodRuntimeError(LifelongError):
    """The API server refused or failed a Pod operation (other than AlreadyExists/NotFound)."""


@dataclass(frozen=True, slots=True)
class PodsRuntimeSettings:
    """How Pods are built and watched."""

    #: Force ``hostNetwork: true`` as upstream does: workers reach the LC on the host's loopback.
    host_network: bool = True
    #: Watch only this namespace's Pods; ``None`` watches all namespaces (needs a ClusterRole).
    namespace: str | None = None
    #: Seconds the API server holds one Pod watch open before the runtime resumes it.
    watch_timeout: int = 30
    #: Client-side timeout of create/delete/list requests, seconds.
    request_timeout: float = 30.0
    #: Upper bound of the jittered exponential wait after a failed list or watch, seconds.
    error_backoff_max: float = 30.0


def _merge_env(user: list[dict[str, Any]] | None, ours: Mapping[str, str]) -> list[dict[str, Any]]:
    merged: list[dict[str, Any]] = []
    for entry in user or []:
        name = entry.get("name")
        if name in ours:
            continue
        merged.append(copy.deepcopy(entry))
    merged.extend({"name": key, "value": str(ours[key])} for key in sorted(ours))
    return merged


def build_pod(spec: WorkerSpec, *, host_network: bool = True) -> dict[str, Any]:
    """The Pod (API dict) that runs ``spec``'s worker; see the module docstring for the rules."""
    template = copy.deepcopy(spec.template)
    tmeta = template.get("metadata") or {}
    labels = dict(tmeta.get("labels") or {})
    labels.update(
        {
            LABEL_JOB_NAME: spec.job_name,
            LABEL_WORKER_TYPE: WORKER_TYPES[spec.stage],
            LABEL_STAGE: spec.stage.value,
            LABEL_ROUND: str(spec.round),
        }
    )
    metadata: dict[str, Any] = {"name": spec.name, "namespace": spec.job_namespace, "labels": labels}
    if tmeta.get("annotations"):
        metadata["annotations"] = dict(tmeta["annotations"])
    if spec.job_uid:
        labels[LABEL_JOB_UID] = spec.job_uid
        metadata["ownerReferences"] = [
            {
                "apiVersion": JOB_API_VERSION,
                "kind": JOB_KIND,
                "name": spec.job_name,
                "uid": spec.job_uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    pod_spec: dict[str, Any] = template.get("spec") or {}
    for container in pod_spec.get("containers") or []:
        container["env"] = _merge_env(container.get("env"), spec.env)
    if not pod_spec.get("restartPolicy") and spec.stage in (Stage.TRAIN, Stage.EVAL):
        pod_spec["restartPolicy"] = "OnFailure"
    if host_network:
        pod_spec["hostNetwork"] = True
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}


def phase_of_pod(pod: Mapping[str, Any]) -> WorkerPhase | None:
    """The worker phase a Pod (API dict) shows, or None when it is not one of our workers."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    try:
        stage = Stage(str(labels.get(LABEL_STAGE)))
        round_ = int(labels.get(LABEL_ROUND, ""))
        job = str(labels[LABEL_JOB_NAME])
    except (KeyError, ValueError):
        return None
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase not in _PHASES:  # "Unknown": the node is unreachable; say nothing yet
        return None
    exit_code: int | None = None
    messages = [status["message"]] if status.get("message") else []
    terminated_all = True
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        terminated = state.get("terminated")
        if terminated:
            code = terminated.get("exitCode")
            if isinstance(code, int) and (exit_code is None or exit_code == 0):
                exit_code = code
            if terminated.get("reason") and code:
                messages.append(f"{container.get('name')}: {terminated['reason']}")
        else:
            terminated_all = False
            waiting = state.get("waiting") or {}
            if waiting.get("reason"):
                messages.append(f"{container.get('name')}: {waiting['reason']}")
    if not status.get("containerStatuses"):
        terminated_all = False
    if not terminated_all and exit_code == 0:
        exit_code = None
    typed_phase: Phase = phase  # type: ignore[assignment]  # one of _PHASES, checked above
    return WorkerPhase(
        job_namespace=str(meta.get("namespace", "default")),
        job_name=job,
        stage=stage,
        round=round_,
        worker=str(meta.get("name")),
        phase=typed_phase,
        exit_code=exit_code,
        message="; ".join(messages),
    )


class KubernetesPodsRuntime:
    """:class:`~lifelong.cloud.runtimes.base.WorkerRuntime` that runs workers as Pods.

    ``set_phase_handler`` starts the Pod watch (a daemon thread: list, then watch from the
    list's version, relist on 410 Gone) on first call; ``close`` stops it.
    """

    def __init__(self, core_api: Any, *, settings: PodsRuntimeSettings | None = None) -> None:
        self._core = core_api
        self.settings = settings or PodsRuntimeSettings()
        self._on_phase: Callable[[WorkerPhase], None] | None = None
        self._reported: dict[tuple[str, str], tuple[str, int | None]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: Any = None
        self._lock = threading.Lock()
        self._resource_version = ""
        self._failures = 0
        self._failure_wait = exponential_jitter(0.5, self.settings.error_backoff_max, 0.5)

    # -- WorkerRuntime ---------------------------------------------------------------------

    def ensure_worker(self, spec: WorkerSpec) -> None:
        from kubernetes.client.exceptions import ApiException

        pod = build_pod(spec, host_network=self.settings.host_network)
        try:
            self._core.create_namespaced_pod(
                spec.job_namespace, pod, _request_timeout=self.settings.request_timeout
            )
        except ApiException as exc:
            if exc.status == 409:
                log.debug("pod %s/%s already exists", spec.job_namespace, spec.name)
                return
            raise PodRuntimeError(
                f"create pod {spec.job_namespace}/{spec.name}: API server answered {exc.status} {exc.reason}"
            ) from exc
        log.info(
            "job %s/%s stage=%s round=%d: created pod %s",
            spec.job_namespace,
            spec.job_name,
            spec.stage.value,
            spec.round,
            spec.name,
        )

    def delete_workers(self, job_namespace: str, job_name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self._core.delete_collection_namespaced_pod(
                job_namespace,
                label_selector=f"{LABEL_JOB_NAME}={job_name}",
                propagation_policy="Background",
                _request_timeout=self.settings.request_timeout,
            )
        except ApiException as exc:
            if exc.status != 404:
                what = f"delete pods of job {job_namespace}/{job_name}"
                raise PodRuntimeError(f"{what}: API server answered {exc.status} {exc.reason}") from exc
        log.info("job %s/%s: deleted its pods", job_namespace, job_name)

    def set_phase_handler(self, on_phase: Callable[[WorkerPhase], None]) -> None:
        self._on_phase = on_phase
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="k8s-pod-watch", daemon=True)
                self._thread.start()

    def close(self) -> None:
        """Stop the Pod watch (the Pods themselves stay)."""
        self._stop.set()
        watch = self._watch
        if watch is not None:
            watch.stop()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.request_timeout)

    # -- the Pod watch ---------------------------------------------------------------------

    def _selector_call(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        if self.settings.namespace is None:
            return self._core.list_pod_for_all_namespaces, ()
        return self._core.list_namespaced_pod, (self.settings.namespace,)

    def _report(self, pod: Mapping[str, Any]) -> None:
        observed = phase_of_pod(pod)
        if observed is None or self._on_phase is None:
            return
        key = (observed.job_namespace, observed.worker)
        state = (observed.phase, observed.exit_code)
        if self._reported.get(key) == state:
            return
        self._reported[key] = state
        log.info(
            "job %s/%s stage=%s round=%d: pod %s is %s",
            observed.job_namespace,
            observed.job_name,
            observed.stage.value,
            observed.round,
            observed.worker,
            observed.phase,
        )
        try:
            self._on_phase(observed)
        except Exception:
            log.exception("phase handler failed for pod %s/%s", observed.job_namespace, observed.worker)

    def _relist(self) -> None:
        func, args = self._selector_call()
        answer = func(
            *args,
            label_selector=LABEL_JOB_NAME,
            _preload_content=False,
            _request_timeout=self.settings.request_timeout,
        )
        import json

        body = json.loads(answer.data)
        for pod in body.get("items") or []:
            self._report(pod)
        self._resource_version = str((body.get("metadata") or {}).get("resourceVersion") or "")
        self._failures = 0

    def _backoff(self) -> None:
        """Wait after a failed list or watch: tenacity's jittered exponential wait for the number
        of failures in a row (0.5 s doubling, up to ``error_backoff_max``; reset by a good stream)."""
        self._failures += 1
        self._stop.wait(wait_seconds(self._failure_wait, self._failures))

    def _run(self) -> None:
        from kubernetes import watch as kube_watch
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        need_list = True
        while not self._stop.is_set():
            try:
                if need_list:
                    self._relist()
                    need_list = False
                func, args = self._selector_call()
                self._watch = kube_watch.Watch(return_type="object")  # type: ignore[no-untyped-call]  # raw dicts, no model checks
                if self._stop.is_set():
                    return
                for event in self._watch.stream(
                    func,
                    *args,
                    label_selector=LABEL_JOB_NAME,
                    resource_version=self._resource_version,
                    timeout_seconds=self.settings.watch_timeout,
                    allow_watch_bookmarks=True,
                    _request_timeout=self.settings.watch_timeout + 10,
                ):
                    if self._stop.is_set():
                        return
                    pod = event.get("raw_object")
                    if not isinstance(pod, dict):
                        continue
                    version = (pod.get("metadata") or {}).get("resourceVersion")
                    if version:
                        self._resource_version = str(version)
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        self._report(pod)
                    elif event.get("type") == "DELETED":
                        meta = pod.get("metadata") or {}
                        self._reported.pop((str(meta.get("namespace")), str(meta.get("name"))), None)
                self._failures = 0
            except ApiException as exc:
                if self._stop.is_set():
                    return
                if exc.status == 410:
                    log.info("pod watch expired (410 Gone); listing again")
                    need_list = True
                    continue
                log.warning("pod watch failed: %s %s; retrying", exc.status, exc.reason)
                self._backoff()
            except (HTTPError, OSError, ValueError) as exc:
                if self._stop.is_set():
                    return
                log.warning("pod watch broke: %s; retrying", exc)
                self._backoff()
            finally:
                self._watch = None


if TYPE_CHECKING:  # mypy proves the class implements the interface

    def _implements(runtime: KubernetesPodsRuntime) -> WorkerRuntime:
        return runtime
