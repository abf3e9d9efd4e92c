"""The Ray engine (``--engine ray``): the only module of hpctl that imports Ray.

* :meth:`RayEngine.map` runs each call (a ``compare`` trial) as a Ray task with the
  declared resources (``--cpus-per-trial``, ``--gpus-per-trial``); a task whose worker
  process dies is retried by Ray (``max_retries``), and one that keeps dying comes back as
  an :class:`~hpctl.engines.base.Outcome` with ``died`` set: it costs only itself.
* :class:`RayReplicaPool` keeps actors (``--probe-workers`` of them, or as many as the
  cluster fits for a grid), each holding a replica of the run's task (e.g. the backbone,
  loaded once per actor), that run probe groups and grid points. Per group the trainable
  state is put into the object store once; each actor fetches it once per group. An actor
  that dies is restarted by Ray (``max_restarts``) and its calls are sent again; each
  death is reported as a fault, and a call whose actor dies more than
  :data:`MAX_REPEATS` times is recorded as failed (NaN), never dropped.

Connecting: ``--address auto`` joins the cluster this machine belongs to (``ray start``),
``--address HOST[:PORT]`` a cluster's head (GCS port, default 6379), and no address starts
a local Ray instance (every core of this machine). A process that already called
``ray.init`` keeps its connection.

Token authentication: Ray 2.60's ``ray start --head`` turns it on (the token is in the
head's ``~/.ray/auth_token``). A process joining by ``--address`` sends the token only with
``RAY_AUTH_MODE=token`` set (the token from ``~/.ray/auth_token``, ``RAY_AUTH_TOKEN_PATH``
or ``RAY_AUTH_TOKEN``); without it Ray's client logs an ``InvalidAuthToken`` line a second
for about 20 s before ``ray.init`` fails. :func:`connect` asks the head once first (one GCS
request, Ray's C++ log lines kept off the terminal) and refuses in one line naming
``RAY_AUTH_MODE=token``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import ray  # noqa: F401  (ImportError here is turned into a one-line error by hpctl.engines)
import numpy as np

from hpctl.engines.base import Engine, Outcome, Replica, ReplicaPool, call
from hpctl.errors import ConfigError, one_line

#: Ray's retries of a task whose worker process died (a ``compare`` trial, a grid point)
TASK_RETRIES = 3
#: times a call (a probe, a grid point) is sent again after its actor died, before it is recorded as failed
MAX_REPEATS = 3
#: seconds to wait for a TCP connection to ``--address`` before giving up
CONNECT_TIMEOUT_S = 3.0
DEFAULT_GCS_PORT = 6379
DEFAULT_CLIENT_PORT = 10001


def _cut(text: str, limit: int = 80) -> str:
    text = str(text).replace("\n", " ")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def split_address(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``HOST[:PORT]`` or ``ray://HOST[:PORT]``."""
    text = address.strip()
    client = text.startswith("ray://")
    rest = text[len("ray://"):] if client else text
    host, sep, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    host = host.strip("[]")
    if not host or (sep and not port.isdigit()) or "/" in rest:
        raise ConfigError(f"--address must be 'auto' or HOST[:PORT] (e.g. 10.0.0.5:6379), got {_cut(address)!r}")
    default = DEFAULT_CLIENT_PORT if client else DEFAULT_GCS_PORT
    port_n = int(port) if sep else default
    if not 0 < port_n < 65536:
        raise ConfigError(f"--address port must be in 1..65535, got {port_n}")
    return host, port_n


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> str:
    """Fail within ``timeout`` seconds if nothing listens at ``address``; the address to use.

    ``ray.init`` itself retries an unreachable head for minutes; a TCP connection attempt
    answers in milliseconds (refused, unknown host) or ``timeout`` seconds (no route).
    """
    host, port = split_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except socket.gaierror:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: unknown host {host!r}") from None
    except (socket.timeout, TimeoutError):
        raise ConfigError(f"cannot reach the Ray cluster at {address}: no answer within {timeout:g} s "
                          f"(is `ray start --head` running there, and the port open?)") from None
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc} "
                          f"(is `ray start --head` running there?)") from None
    text = address.strip()
    return text if ":" in text.replace("ray://", "") else f"{text}:{port}"


#: milliseconds the token check gives the head's GCS to answer
AUTH_CHECK_TIMEOUT_MS = 3000


@contextlib.contextmanager
def _quiet_fd2():
    """File descriptor 2 (where Ray's C++ code logs) to /dev/null for the block."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def check_token(address: str) -> None:
    """A one-line ConfigError if the Ray head at ``address`` (``HOST:PORT`` of its GCS) refuses
    this process's authentication token (or the lack of one).

    One request to the GCS (its cluster id, what ``ray.init`` asks first) through Ray's own
    client, with Ray's C++ log lines kept off the terminal; any other outcome (the head
    answers, or is slow) is left to ``ray.init``.
    """
    from ray import _raylet

    auth_error = getattr(ray.exceptions, "AuthenticationError", None)
    try:
        with _quiet_fd2():
            inner = getattr(_raylet, "InnerGcsClient", None)
            try:
                client = inner.standalone(address, None, AUTH_CHECK_TIMEOUT_MS)
            except (AttributeError, TypeError):  # another Ray: its public wrapper (Ray's own timeouts)
                client = _raylet.GcsClient(address=address)
            del client
    except Exception as exc:  # noqa: BLE001 - only an authentication refusal is ours to report
        refused = (auth_error is not None and isinstance(exc, auth_error)) or "InvalidAuthToken" in str(exc)
        if not refused:
            return
        if os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "token":
            raise ConfigError(f"the Ray cluster at {address} refused this machine's authentication token "
                              "(RAY_AUTH_MODE=token is set): use the head's token (its ~/.ray/auth_token) "
                              "here, in ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN") from None
        raise ConfigError(f"the Ray cluster at {address} requires token authentication: set RAY_AUTH_MODE=token "
                          "with the head's token (its ~/.ray/auth_token) in ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH "
                          "or RAY_AUTH_TOKEN") from None


def _auto_address() -> str | None:
    """The address ``ray.init(address="auto")`` would use (RAY_ADDRESS or this machine's
    latest ``ray start``), or None if there is none."""
    try:
        from ray._private.services import canonicalize_bootstrap_address

        return canonicalize_bootstrap_address("auto")
    except Exception:  # noqa: BLE001 - a private helper: without it ray.init reports the problem
        return None


def connect(address: str | None) -> None:
    """``ray.init`` for hpctl: quiet, no dashboard, and one-line errors that come fast.

    A process already connected (``ray.init`` called before, e.g. by a notebook or a test)
    keeps its connection; an ``address`` is still checked, and must be that cluster's.
    """
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    if address is None:
        kwargs.update(include_dashboard=False)
        where = "a local Ray instance"
    elif address.strip() == "auto":
        found = None if ray.is_initialized() else _auto_address()
        if found is None and not ray.is_initialized():
            raise ConfigError("--address auto: no running Ray cluster found on this machine "
                              "(start one with `ray start --head`, or set RAY_ADDRESS)")
        if found is not None:
            check_reachable(found)
        kwargs["address"] = "auto"
        where = f"the Ray cluster at {found}"
    else:
        kwargs["address"] = check_reachable(address)
        where = f"the Ray cluster at {kwargs['address']}"
        if not ray.is_initialized() and not kwargs["address"].startswith("ray://"):
            check_token(kwargs["address"])
    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        wanted = kwargs.get("address", "auto")
        if wanted != "auto" and not wanted.startswith("ray://") and _same(wanted, current) is False:
            raise ConfigError(f"this process is already connected to the Ray cluster at {current}; "
                              f"--address {address} needs a new process")
        return
    try:
        ray.init(**kwargs)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - ConnectionError, ValueError (ray:// without ray[client]), ...
        raise ConfigError(f"cannot start or join {where}: {one_line(exc, with_type=False)}") from None


def _same(a: str, b: str) -> bool | None:
    """Whether two ``HOST:PORT`` addresses can name the same head (the same port: one host
    has many names and addresses); None if one cannot be read."""
    try:
        return split_address(a)[1] == split_address(b)[1]
    except ConfigError:
        return None


def _largest(nodes: list[dict[str, Any]], resource: str) -> float:
    return max((float(n.get("Resources", {}).get(resource, 0.0)) for n in nodes if n.get("Alive")), default=0.0)


def _total(nodes: list[dict[str, Any]], resource: str) -> float:
    return sum(float(n.get("Resources", {}).get(resource, 0.0)) for n in nodes if n.get("Alive"))


class RayEngine(Engine):
    """Calls as Ray tasks, probe replicas as Ray actors, each with ``cpus``/``gpus``."""

    name = "ray"
    parallel = True

    def __init__(self, address: str | None = None, *, cpus: float = 1.0, gpus: float = 0.0,
                 retries: int = TASK_RETRIES) -> None:
        connect(address)
        self.cpus, self.gpus, self.retries = float(cpus), float(gpus), int(retries)
        nodes = ray.nodes()
        cpu, gpu = _largest(nodes, "CPU"), _largest(nodes, "GPU")
        if self.gpus > 0 and gpu == 0:
            raise ConfigError(f"--gpus-per-trial {self.gpus:g}: no node of the Ray cluster has a GPU")
        if self.gpus > gpu:
            raise ConfigError(f"--gpus-per-trial {self.gpus:g} is more than any Ray node has (at most {gpu:g})")
        if self.cpus > cpu:
            raise ConfigError(f"--cpus-per-trial {self.cpus:g} is more than any Ray node has (at most {cpu:g})")
        self._call = ray.remote(call)

    def resources(self) -> dict[str, float]:
        return {"num_cpus": self.cpus, "num_gpus": self.gpus}

    def map(self, fn: Callable[..., Any], calls: Sequence[tuple], *,
            on_result: Callable[[int, Outcome], None] | None = None,
            in_process: Callable[[int], dict[str, Any]] | None = None) -> list[Outcome]:
        remote = self._call.options(**self.resources(), max_retries=self.retries, retry_exceptions=False,
                                    name=f"hpctl.{getattr(fn, '__name__', 'call')}")
        index = {remote.remote(fn, *args): i for i, args in enumerate(calls)}
        out: list[Outcome | None] = [None] * len(index)
        pending = list(index)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    try:
                        outcome = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        outcome = Outcome(error=f"worker lost {self.retries + 1} times: {one_line(exc)}", died=True)
                    out[index[ref]] = outcome
                    if on_result is not None:
                        on_result(index[ref], outcome)
        except BaseException:
            for ref in pending:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - already finished or gone
                    pass
            raise
        return out  # type: ignore[return-value]

    def capacity(self) -> int:
        nodes = ray.nodes()
        fits = [_total(nodes, "CPU") / self.cpus if self.cpus else math.inf,
                _total(nodes, "GPU") / self.gpus if self.gpus else math.inf]
        n = min(fits)
        return max(1, int(n + 1e-9)) if math.isfinite(n) else 1

    def replica_pool(self, spec_json: dict[str, Any], out_dir: Path, workers: int) -> "RayReplicaPool":
        nodes = ray.nodes()
        for resource, each in (("CPU", self.cpus), ("GPU", self.gpus)):
            if each and workers * each > _total(nodes, resource) + 1e-9:
                raise ConfigError(f"--probe-workers {workers} x {each:g} {resource}s each need "
                                  f"{workers * each:g} {resource}s at once; the Ray cluster has {_total(nodes, resource):g} "
                                  f"(lower --probe-workers or --{resource.lower()}s-per-trial)")
        return RayReplicaPool(spec_json, out_dir, workers, self.resources())


class ReplicaActor:
    """A worker: one :class:`~hpctl.engines.base.Replica` in its own process."""

    def __init__(self, spec_json: dict[str, Any], out_dir: str) -> None:
        self.replica = Replica(spec_json, out_dir)

    def warm(self) -> None:
        try:
            self.replica.warm()
        except Exception:  # noqa: BLE001 - nobody waits for this call: the first real call reports it
            self.replica.task = None

    def run(self, kind: str, key: Any, box: list, index: int, value: np.ndarray, want_state: bool) -> Outcome:
        # ``box`` holds the group's state as an ObjectRef (in a list, so Ray does not fetch
        # it for every call): fetched only when the replica has not restored this group yet
        def get_state() -> Any:
            return ray.get(box[0])

        if kind == "probe":
            return self.replica.probe(key, get_state, index, value)
        return self.replica.full_run(key, get_state, index, value, want_state)


class RayReplicaPool(ReplicaPool):
    """``workers`` :class:`ReplicaActor` s; call ``i`` of a group goes to actor ``i % workers``."""

    def __init__(self, spec_json: dict[str, Any], out_dir: Path, workers: int, resources: dict[str, float]) -> None:
        cls = ray.remote(ReplicaActor).options(**resources, max_restarts=-1, max_task_retries=0)
        self.actors = [cls.remote(spec_json, str(out_dir)) for _ in range(int(workers))]
        for actor in self.actors:
            actor.warm.remote()  # builds the task while the run sets itself up; a failure shows on first use
        self.epoch = [0] * len(self.actors)  # deaths seen per actor
        self.token = uuid.uuid4().hex
        self.groups = 0

    def group(self, kind: str, state: Any, values: np.ndarray, on_fault: Callable[[np.ndarray, str], None],
              want_state: bool = False) -> list[Outcome]:
        self.groups += 1
        key = (self.token, self.groups)
        box = [ray.put(state)]  # once per group, whatever the number of actors
        n, last = len(self.actors), len(values) - 1
        out: list[Outcome | None] = [None] * len(values)
        repeats = [0] * len(values)
        inflight: dict[Any, tuple[int, int, int]] = {}

        def submit(i: int) -> None:
            a = i % n
            ref = self.actors[a].run.remote(kind, key, box, i, values[i], want_state and i == last)
            inflight[ref] = (i, a, self.epoch[a])

        for i in range(len(values)):
            submit(i)
        try:
            while inflight:
                done, _ = ray.wait(list(inflight), num_returns=1)
                ref = done[0]
                i, a, epoch = inflight.pop(ref)
                try:
                    out[i] = ray.get(ref)
                    continue
                except ray.exceptions.RayError as exc:
                    error = one_line(exc)
                if epoch == self.epoch[a]:  # the first of this death's lost calls reports it
                    self.epoch[a] += 1
                    on_fault(np.asarray(values[i]), f"worker {a} died ({_cut(error, 160)}); restarted, "
                                                    f"its {kind.replace('_', ' ')}s repeated")
                repeats[i] += 1
                if repeats[i] > MAX_REPEATS:
                    out[i] = Outcome(error=f"worker died {repeats[i]} times on this {kind.replace('_', ' ')}: {error}",
                                     died=True)
                else:
                    submit(i)
        except BaseException:
            for ref in inflight:
                try:
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001
                    pass
            raise
        return out  # type: ignore[return-value]

    def close(self) -> None:
        actors, self.actors = self.actors, []
        for actor in actors:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
