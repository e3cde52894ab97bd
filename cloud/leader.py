"""Leader election for GM replicas with a ``coordination.k8s.io/v1`` Lease.

What it is for: in Kubernetes mode the GM Deployment runs several replicas; only the leader
runs the controllers and talks to the edges, the others wait to take over. Who calls it: the
GM service (``lifelong gm --store kubernetes``) builds a :class:`LeaderElector` with a
``CoordinationV1Api``, starts it, and starts or stops its controllers in the callbacks.

The rules are client-go's ``leaderelection`` package, in a thread:

* every ``retry_period`` each replica reads the Lease. It takes the Lease when it does not
  exist, when it has no holder, or when its record (holder, renew time, transitions) has not
  changed for ``leaseDurationSeconds`` **as measured on this replica's own clock** since it
  first saw that record (no trust in other hosts' clocks); the leader renews it. Writes carry
  the Lease's resourceVersion, so of two replicas racing for it exactly one wins (409).
* a leader that has not renewed successfully for ``renew_deadline`` stops leading
  (``on_stopped_leading``) and keeps campaigning. ``renew_deadline`` is shorter than
  ``lease_duration``, so the old leader has stopped before any other replica can see the
  Lease expire and start: never two leaders at once (with bounded clock-rate drift).
* ``stop()`` ends the thread; a leader by default releases the Lease (empty holder), so a
  successor takes over on its next ``retry_period`` instead of waiting out the lease.

``identity`` is the pod name (``POD_NAME`` from the downward API, else the host name) plus a
random suffix only when neither is available.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["LeaderElectionSettings", "LeaderElector", "default_identity"]


def default_identity() -> str:
    """The pod name (``POD_NAME``), else ``HOSTNAME``, else the host name and a random suffix."""
    for var in ("POD_NAME", "HOSTNAME"):
        if os.environ.get(var):
            return os.environ[var]
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"


def _micro_time(dt: datetime) -> str:
    """Kubernetes ``MicroTime``: RFC 3339 with microseconds, UTC."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class LeaderElectionSettings:
    """Where the Lease lives and the election's timing (client-go's defaults)."""

    #: The Lease's name; every replica of one GM uses the same one.
    lease_name: str = "lifelong-gm"
    #: The Lease's namespace (the GM's own, ``POD_NAMESPACE`` in the Deployment).
    namespace: str = "default"
    #: Seconds a Lease stays valid after its last renewal; how long the replicas wait after a
    #: leader died before one takes over. Written into ``spec.leaseDurationSeconds`` (whole
    #: seconds, at least 1).
    lease_duration: float = 15.0
    #: Seconds the leader keeps retrying a failing renewal before it stops leading. Must be
    #: shorter than ``lease_duration``: the old leader stops before others may start.
    renew_deadline: float = 10.0
    #: Seconds between two attempts to acquire or renew.
    retry_period: float = 2.0
    #: Client-side timeout of one Lease request, seconds; shorter than ``renew_deadline`` so a
    #: hung request cannot outlast it.
    request_timeout: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.renew_deadline < self.lease_duration:
            raise ValueError("renew_deadline must be positive and shorter than lease_duration")
        if not 0 < self.retry_period < self.renew_deadline:
            raise ValueError("retry_period must be positive and shorter than renew_deadline")


@dataclass(frozen=True, slots=True)
class _Record:
    holder: str
    renew_time: str
    transitions: int


class LeaderElector:
    """Campaigns for the Lease in a daemon thread; see the module docstring for the rules."""

    def __init__(
        self,
        coordination_api: Any,
        *,
        identity: str | None = None,
        settings: LeaderElectionSettings | None = None,
        on_started_leading: Callable[[], None] | None = None,
        on_stopped_leading: Callable[[], None] | None = None,
    ) -> None:
        self._api = coordination_api
        self.identity = identity or default_identity()
        self.settings = settings or LeaderElectionSettings()
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._leading = threading.Event()
        self._observed: _Record | None = None
        self._observed_at = 0.0  # monotonic time when self._observed was first seen
        self._last_renew = 0.0  # monotonic time of the last successful acquire/renew

    @property
    def is_leader(self) -> bool:
        return self._leading.is_set()

    @property
    def observed_holder(self) -> str | None:
        """Who held the Lease when this elector last read it (None before its first read, or
        while the Lease has no holder); for ``lifelong gm``'s logs and for tests."""
        return (self._observed.holder or None) if self._observed is not None else None

    def wait_for_leadership(self, timeout: float | None = None) -> bool:
        return self._leading.wait(timeout)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="leader-elector", daemon=True)
            self._thread.start()

    def stop(self, *, release: bool = True) -> None:
        """Stop campaigning; a leader stops leading and, with ``release``, frees the Lease."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.request_timeout + self.settings.retry_period + 1)
        if self.is_leader:
            if release:
                self._release()
            self._set_leading(False)

    # -- the loop --------------------------------------------------------------------------

    def _run(self) -> None:
        period = self.settings.retry_period
        while not self._stop.is_set():
            ok = self._try_acquire_or_renew()
            now = time.monotonic()
            if ok:
                self._last_renew = now
                self._set_leading(True)
            elif self.is_leader and now - self._last_renew >= self.settings.renew_deadline:
                log.warning(
                    "leader %s could not renew lease %s/%s for %.1fs; stopping leading",
                    self.identity,
                    self.settings.namespace,
                    self.settings.lease_name,
                    now - self._last_renew,
                )
                self._set_leading(False)
            # A leader renews on time even when the last attempt was slow.
            wait = max(0.0, period - (time.monotonic() - now)) if self.is_leader else period
            self._stop.wait(wait)

    def _set_leading(self, leading: bool) -> None:
        if leading == self.is_leader:
            return
        callback = self._on_started if leading else self._on_stopped
        if leading:
            self._leading.set()
            log.info(
                "%s is now the leader (lease %s/%s)",
                self.identity,
                self.settings.namespace,
                self.settings.lease_name,
            )
        else:
            self._leading.clear()
            log.info("%s stopped leading", self.identity)
        if callback is not None:
            try:
                callback()
            except Exception:
                log.exception("leader election callback failed")

    def _spec(self, *, acquire_time: str, transitions: int, holder: str | None = None) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity if holder is None else holder,
            "leaseDurationSeconds": max(1, round(self.settings.lease_duration)),
            "acquireTime": acquire_time,
            "renewTime": _micro_time(datetime.now(UTC)),
            "leaseTransitions": transitions,
        }

    def _try_acquire_or_renew(self) -> bool:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        s = self.settings
        try:
            try:
                lease = self._api.read_namespaced_lease(
                    s.lease_name, s.namespace, _request_timeout=s.request_timeout
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise
                body = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": s.lease_name, "namespace": s.namespace},
                    "spec": self._spec(acquire_time=_micro_time(datetime.now(UTC)), transitions=0),
                }
                self._api.create_namespaced_lease(s.namespace, body, _request_timeout=s.request_timeout)
                return True
            spec = lease.spec
            holder = (spec.holder_identity or "") if spec else ""
            renew = spec.renew_time.isoformat() if spec and spec.renew_time else ""
            transitions = (spec.lease_transitions or 0) if spec else 0
            record = _Record(holder, renew, transitions)
            now = time.monotonic()
            if record != self._observed:
                self._observed, self._observed_at = record, now
            duration = float(spec.lease_duration_seconds or s.lease_duration) if spec else s.lease_duration
            if holder and holder != self.identity and now - self._observed_at < duration:
                return False  # held by someone else and not expired
            if holder == self.identity and spec and spec.acquire_time:
                acquire = _micro_time(spec.acquire_time)
            else:
                acquire, transitions = _micro_time(datetime.now(UTC)), transitions + 1
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": s.lease_name,
                    "namespace": s.namespace,
                    "resourceVersion": lease.metadata.resource_version,
                },
                "spec": self._spec(acquire_time=acquire, transitions=transitions),
            }
            self._api.replace_namespaced_lease(
                s.lease_name, s.namespace, body, _request_timeout=s.request_timeout
            )
            if holder != self.identity:
                log.info(
                    "%s took lease %s/%s from %r", self.identity, s.namespace, s.lease_name, holder or None
                )
            return True
        except ApiException as exc:
            if exc.status != 409:  # 409: another replica won the race; normal
                log.warning(
                    "lease %s/%s: API server answered %s %s",
                    s.namespace,
                    s.lease_name,
                    exc.status,
                    exc.reason,
                )
            return False
        except (HTTPError, OSError) as exc:
            log.warning("lease %s/%s: %s", s.namespace, s.lease_name, exc)
            return False

    def _release(self) -> None:
        """Give the Lease up (empty holder) so a successor need not wait out the duration."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        s = self.settings
        try:
            lease = self._api.read_namespaced_lease(
                s.lease_name, s.namespace, _request_timeout=s.request_timeout
            )
            if not lease.spec or lease.spec.holder_identity != self.identity:
                return
            spec = self._spec(
                acquire_time=_micro_time(lease.spec.acquire_time or datetime.now(UTC)),
                transitions=lease.spec.lease_transitions or 0,
                holder="",
            )
            spec["leaseDurationSeconds"] = 1
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": s.lease_name,
                    "namespace": s.namespace,
                    "resourceVersion": lease.metadata.resource_version,
                },
                "spec": spec,
            }
            self._api.replace_namespaced_lease(
                s.lease_name, s.namespace, body, _request_timeout=s.request_timeout
            )
            log.info("%s released lease %s/%s", self.identity, s.namespace, s.lease_name)
        except (ApiException, HTTPError, OSError) as exc:
            log.warning("could not release lease %s/%s: %s", s.namespace, s.lease_name, exc)
