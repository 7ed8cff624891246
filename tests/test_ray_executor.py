"""Ray executor on a local 2-CPU Ray: same rows as the local executor, resume, clear errors."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from prunelab import PrunelabError
from prunelab.sweep import DataSpec, SweepSpec, expand_cells, make_executor, run_sweep
from prunelab.sweep.executors import SequentialExecutor
from prunelab.sweep.ray_executor import check_reachable, import_ray
from prunelab.sweep.store import Store, drop_measured, load_artifact, load_results
from prunelab.training import TrainConfig

# one local Ray at a time: under pytest-xdist every Ray test runs in the same worker
pytestmark = pytest.mark.xdist_group("ray")

SPEC = SweepSpec(
    model="mlp-tiny",
    data=DataSpec(name="digits"),
    methods=("magnitude", "taylor"),
    allocations=("global", "uniform"),
    levels=(0.5, 0.9),
    dense=TrainConfig(epochs=2),
    finetune=TrainConfig(epochs=0.5),
)


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray", reason="ray is not installed (extra prunelab[ray])")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dense-cache")


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, cache_dir) -> Path:
    """The reference: the sequential executor with one torch thread, like each Ray task."""
    out = tmp_path_factory.mktemp("local")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_sweep(SPEC, out, SequentialExecutor(cache_dir), cache_dir=cache_dir)
    finally:
        torch.set_num_threads(old)
    return out


def _rows(run_dir: Path):
    df = load_results(run_dir).pipe(drop_measured)  # column order follows finish order
    return df[sorted(df.columns)].sort_values("cell_id").reset_index(drop=True)


def test_ray_sweep_equals_local_rows(ray_session, local_run, cache_dir, tmp_path):
    run_sweep(SPEC, tmp_path, make_executor("ray", 2, cache_dir), cache_dir=cache_dir)
    local, remote = _rows(local_run), _rows(tmp_path)
    assert len(remote) == len(expand_cells(SPEC)) == 9
    assert remote.equals(local), remote.compare(local)
    for cid in local["cell_id"]:
        assert np.array_equal(
            load_artifact(tmp_path, cid, "test_preds"), load_artifact(local_run, cid, "test_preds")
        )


def test_interrupted_ray_sweep_resumes(ray_session, local_run, cache_dir, tmp_path):
    seen: list[str] = []

    def stop_after_three(cell, result) -> None:
        seen.append(cell.cell_id)
        if len(seen) == 3:
            raise KeyboardInterrupt  # Ctrl-C in the driver while cells are still running

    with pytest.raises(KeyboardInterrupt):
        run_sweep(
            SPEC,
            tmp_path,
            make_executor("ray", 2, cache_dir),
            on_cell=stop_after_three,
            cache_dir=cache_dir,
        )
    with Store(tmp_path) as store:
        assert store.finished_ids() == set(seen)  # written as they arrived, nothing half-done
    outcome = run_sweep(SPEC, tmp_path, make_executor("ray", 2, cache_dir), cache_dir=cache_dir)
    assert (outcome.skipped, outcome.ran) == (3, 6)
    assert _rows(tmp_path).equals(_rows(local_run))


def test_unreachable_address_fails_fast(tmp_path, cache_dir):
    start = time.perf_counter()
    with pytest.raises(PrunelabError, match="cannot reach Ray cluster at 127.0.0.1:1"):
        run_sweep(
            SPEC,
            tmp_path,
            make_executor("ray", 1, cache_dir, address="127.0.0.1:1"),
            cache_dir=cache_dir,
        )
    assert time.perf_counter() - start < 30
    with Store(tmp_path) as store:
        assert store.finished_ids() == set()  # store created, intact, resumable


@pytest.mark.parametrize("address", ["nohost", "host:port", "ray://:10001"])
def test_malformed_address(address):
    want = f"bad Ray address '{re.escape(address)}': expected host:port or ray://host:port"
    with pytest.raises(PrunelabError, match=f"^{want}$"):
        check_reachable(address)


def test_missing_ray_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees when not installed
    with pytest.raises(PrunelabError, match=r"pip install 'prunelab\[ray\]'"):
        import_ray()


def _busy_ray_workers() -> list[int]:
    """PIDs of Ray worker processes executing a cell right now (Ray titles them so)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if cmd.startswith(b"ray::_ray_task"):
                pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc")
def test_killed_ray_worker_loses_nothing(ray_session, local_run, cache_dir, tmp_path):
    """SIGKILL a worker in the middle of a cell: Ray reruns that cell, every row arrives once."""
    import os
    import signal
    import threading

    killed: list[int] = []
    stop = threading.Event()

    def assassin() -> None:
        while not stop.is_set() and not killed:
            busy = _busy_ray_workers()
            if busy:
                os.kill(busy[0], signal.SIGKILL)
                killed.append(busy[0])
            time.sleep(0.005)

    thread = threading.Thread(target=assassin, daemon=True)
    thread.start()
    try:
        outcome = run_sweep(SPEC, tmp_path, make_executor("ray", 2, cache_dir), cache_dir=cache_dir)
    finally:
        stop.set()
        thread.join()
    assert killed, "no busy Ray worker was seen to kill"
    assert outcome.ran == len(expand_cells(SPEC))
    assert _rows(tmp_path).equals(_rows(local_run))
