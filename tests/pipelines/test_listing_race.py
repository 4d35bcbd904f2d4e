"""Ray 2.60's file-listing race (``pipelines.ray_runtime``): its completion-signalling thread posting to
a pool already shut down dies with an ``InterruptedError`` traceback; every process of an fsr job drops
exactly that one and nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

from tests.conftest import ROOT


def _race_in_rays_own_code() -> None:
    """The race, made certain: the pool is shut down before the signaller posts its stop markers."""
    from ray.data._internal.dynamic_work_queue import _signal_completion, _WorkerPool

    pool = _WorkerPool()
    pool.interrupted.set()  # the consumer has drained its results and shut the pool down
    pool.start_thread(target=_signal_completion, args=(pool, 2), name="completion-signaler").join()


def _raises(exc: BaseException) -> None:
    raise exc


def test_the_race_is_dropped_and_every_other_thread_error_kept(monkeypatch):
    from pipelines.ray_runtime import quiet_listing_shutdown_race

    seen = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append((args.exc_type, args.thread.name)))
    _race_in_rays_own_code()  # without the hook: Python's handler gets the traceback
    assert len(seen) == 1 and seen[0][0] is InterruptedError and seen[0][1].endswith("/completion-signaler")

    quiet_listing_shutdown_race()
    quiet_listing_shutdown_race()  # installed once: the chain does not grow
    seen.clear()
    _race_in_rays_own_code()
    assert seen == []
    # the same exception type from the same thread name, but not from Ray's signaller: kept
    same_name = threading.Thread(target=_raises, args=(InterruptedError(),), name="pool-9/completion-signaler")
    same_name.start(), same_name.join()
    # another error in Ray's pool thread: kept
    other = threading.Thread(target=_raises, args=(ValueError("boom"),), name="pool-9/completion-signaler")
    other.start(), other.join()
    assert seen == [(InterruptedError, "pool-9/completion-signaler"), (ValueError, "pool-9/completion-signaler")]


_WORKERS = """
import threading, ray
from pipelines.ray_runtime import private_ray_env, start_ray

def installed():
    return bool(getattr(threading.excepthook, "_fsr_listing_race", False))

@ray.remote(num_cpus=0)
def nested():
    return installed()

@ray.remote(num_cpus=0)
def stage():
    return installed(), ray.get(nested.remote())

start_ray(None, 1)
print("RESULT", installed(), ray.get(stage.options(runtime_env=private_ray_env()).remote()))
ray.shutdown()
"""


def test_every_process_of_a_job_has_it(tmp_path):
    """The driver, a stage task (with the stage's own runtime environment) and a task it starts."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-c", _WORKERS], cwd=str(tmp_path), env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RESULT True (True, True)" in done.stdout, done.stdout[-2000:]
