"""Ray executor: every pending cell becomes one Ray task, collected with ``ray.wait``.

(The dense sensitivity scan's per-layer :class:`~prunelab.sweep.scan.ScanJob` s travel the same
way, so the scan spreads over the cluster too.)

* All cells are submitted at once; results are yielded in completion order, so the driver
  writes each to the store the moment it lands. A lost worker is retried by Ray
  (``max_retries``); an interrupted driver cancels the rest and loses only cells in flight;
  rerunning the same sweep resumes from the store.
* The shared :class:`Context` (data, dense weights, dense outputs) is built once on the
  driver and ``ray.put`` once; each worker process deserialises it once and keeps it (with
  its score cache) for every later task of the same sweep.
* ``ray`` is imported lazily (extra ``prunelab[ray]``); without an address a local Ray is
  started with ``workers`` CPUs; an address is checked with a short TCP connect first, because
  ``ray.init`` on an unreachable address retries for minutes.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from prunelab.errors import PrunelabError
from prunelab.measure import inference
from prunelab.measure.inference import set_engine
from prunelab.progress import Progress
from prunelab.sources.memory import MEMORY_PREFIX
from prunelab.sources.user import SOURCE_ROOT_ENV, is_import_path
from prunelab.sweep.cell import Cell, CellResult
from prunelab.sweep.context import Context, ContextCache
from prunelab.sweep.scan import ScanJob, run_item

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 3.0
RAY_CLIENT_PORT = 10001

# One per Ray worker process: context ObjectRef id -> deserialised Context (a memo, not state
# that changes results; the process-pool executor keeps its contexts the same way).
_WORKER_CONTEXTS: dict[str, Context] = {}


def import_ray() -> Any:
    """``import ray`` or a PrunelabError telling how to install it."""
    try:
        import ray
    except ImportError:
        raise PrunelabError(
            "the ray executor needs Ray: pip install 'prunelab[ray]' (or use --executor local)"
        ) from None
    return ray


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast unless a TCP connection to ``host:port`` (or ``ray://host[:port]``) opens."""
    if address == "auto":
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep:
        host, port = hostport, str(RAY_CLIENT_PORT) if address.startswith("ray://") else ""
    if not host or not port.isdigit():
        raise PrunelabError(f"bad Ray address '{address}': expected host:port or ray://host:port")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise PrunelabError(
            f"cannot reach Ray cluster at {address} ({e.strerror or e}; tried for {timeout:g} s)"
        ) from None


def user_files(cells: Sequence[Cell]) -> list[Path]:
    """The user's files the cells name: model code or model file, weights, data, metrics."""
    names: set[str] = set()
    for cell in cells:
        for text in (
            cell.model,
            cell.weights,
            cell.data.loader,
            cell.data.path,
            *(c.path for c in cell.task.custom),
        ):
            if not text or text.startswith(MEMORY_PREFIX):
                continue
            names.add(text.rpartition(":")[0] if is_import_path(text) else text)
    return sorted(Path(n) for n in names if Path(n).is_absolute() and Path(n).exists())


def code_runtime_env(cells: Sequence[Cell]) -> dict[str, Any] | None:
    """Ray ``runtime_env`` shipping the folder that holds every user file to remote workers.

    Workers get it as their working directory and ``$PRUNELAB_SOURCE_ROOT`` names the driver's
    folder, so :func:`prunelab.sources.user.local_file` finds each file there. ``None`` when the
    cells name no user file (built-in models and data).
    """
    files = user_files(cells)
    if not files:
        return None
    root = os.path.commonpath([str(f.parent if f.is_file() else f) for f in files])
    return {"working_dir": root, "env_vars": {SOURCE_ROOT_ENV: root}}


def _ray_task(
    item: Cell | ScanJob, ctx_box: list, threads: int, engine: str = "auto"
) -> CellResult | list[dict]:
    """Runs inside a Ray worker. ``ctx_box`` wraps the context ref so Ray does not resolve it."""
    import ray

    torch.set_num_threads(threads)
    set_engine(engine)  # the driver's evaluation engine, also on remote nodes
    ref = ctx_box[0]
    key = ref.hex()
    if key not in _WORKER_CONTEXTS:
        _WORKER_CONTEXTS.clear()  # a new sweep: drop the previous one's context
        _WORKER_CONTEXTS[key] = ray.get(ref)
    return run_item(item, _WORKER_CONTEXTS[key])


class RayExecutor:
    """Run cells as Ray tasks with ``cpus_per_cell``/``gpus_per_cell`` resources each.

    >>> RayExecutor(workers=2).workers  # doctest: +SKIP
    2
    """

    def __init__(
        self,
        address: str | None = None,
        workers: int = 1,
        cache_dir: Path | None = None,
        contexts: Any = None,
        cpus_per_cell: float = 1.0,
        gpus_per_cell: float = 0.0,
        max_retries: int = 2,
    ) -> None:

        if cpus_per_cell <= 0 or gpus_per_cell < 0:
            raise PrunelabError("ray resources per cell must be cpus > 0 and gpus >= 0")
        self.address = address
        self.workers = workers
        self.contexts = contexts or ContextCache(cache_dir)
        self.cpus_per_cell = cpus_per_cell
        self.gpus_per_cell = gpus_per_cell
        self.max_retries = max_retries
        import_ray()  # fail before any work when ray is missing or the address is unreachable
        if address is not None:
            check_reachable(address)

    def _connect(self, ray: Any, cells: Sequence[Cell] = ()) -> bool:
        """Connect (or start a local Ray); True when this call started it.

        On a remote cluster the user's files (model/data code, weights, custom metrics) travel
        as the workers' working directory (:func:`code_runtime_env`).
        """
        if self.address is not None:
            check_reachable(self.address)
        if ray.is_initialized():
            return False
        kwargs: dict[str, Any] = {
            "address": self.address,
            "include_dashboard": False,
            "log_to_driver": False,
        }
        if self.address is None:
            kwargs["num_cpus"] = max(self.workers, int(self.cpus_per_cell + 0.999))
        else:
            env = code_runtime_env(cells)
            if env is not None:
                kwargs["runtime_env"] = env
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise PrunelabError(
                f"cannot start or join Ray ({self.address or 'local'}): {str(e).splitlines()[0]}"
            ) from None
        return True

    def map(
        self, cells: Sequence[Cell], progress: Progress | None = None
    ) -> Iterator[tuple[Cell, CellResult]]:
        if not cells:
            return
        ray = import_ray()
        started = self._connect(ray, cells)
        try:
            yield from self._run(ray, cells)
        finally:
            if started:
                ray.shutdown()

    def _run(self, ray: Any, cells: Sequence[Cell]) -> Iterator[tuple[Cell, CellResult]]:
        refs: dict[tuple, Any] = {}
        for cell in cells:
            if cell.context_key() not in refs:
                refs[cell.context_key()] = ray.put(self.contexts.get(cell))
        task = ray.remote(_ray_task).options(
            num_cpus=self.cpus_per_cell, num_gpus=self.gpus_per_cell, max_retries=self.max_retries
        )
        threads = max(1, int(self.cpus_per_cell))
        engine = inference.engine()
        pending = {task.remote(c, [refs[c.context_key()]], threads, engine): c for c in cells}
        log.info("submitted %d cells to Ray", len(pending))
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    cell = pending.pop(ref)
                    yield cell, self._result(ray, ref, cell)
        finally:
            for ref in pending:  # interrupted or failed: stop the rest; the store has the rest
                ray.cancel(ref, force=True)

    def _result(self, ray: Any, ref: Any, cell: Cell) -> CellResult:
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, PrunelabError):
                raise PrunelabError(f"cell {cell.label}: {e.cause}") from None
            raise
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as e:
            raise PrunelabError(
                f"cell {cell.label} lost its Ray worker {self.max_retries + 1} times "
                f"({type(e).__name__}); finished cells are saved, rerun to resume"
            ) from None
