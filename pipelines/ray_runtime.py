"""Starting Ray for an fsr command, so that two fsr jobs can share a machine.

:func:`start_ray` starts a private local Ray (``address=None``) or connects to a cluster. A private
instance gets ``RAY_ADDRESS`` set to itself in this process, and :func:`private_ray_env` is the
runtime environment that passes it on to the tasks a command submits (every task and actor they
start inherits it): Ray Train's controller and its placement-group cleaner look Ray up by address,
and with another fsr job's Ray on the same machine an unnamed lookup finds two instances and fails.
Ray Data's own progress bars are turned off (the console draws the job's). Worker processes of a
private instance inherit this process's environment when Ray starts; no variable is copied into a
runtime environment (a runtime environment is written to Ray's logs in clear text, so no secret
may travel in one: the job's holds only the worker setup hook's name, below).

On a cluster (``address`` given) the nodes' processes were started elsewhere and do not have this
process's environment: :func:`carried_env` picks the variables a stage needs (:data:`CARRIED`:
Ray Train and Ray Data settings, the MLflow and S3 endpoints and region, the plugin list; plus
``runtime.carry_env``) that are set here, and :func:`start_ray` gives them to the job's runtime
environment, which every task and actor of the job inherits, on every node (Ray Train's
controller and workers included). Never a secret: a name that looks like one is refused, and a URI
value that holds a password is left out. Credentials reach a cluster's nodes through the cluster's
own mechanism (Kubernetes Secrets as environment variables of the Ray pods, an IAM role; the
environment of ``ray start`` on a hand-made cluster).

Every process of the job (this one, and every worker through the runtime environment's
``worker_process_setup_hook``, :func:`setup_worker`) runs :func:`quiet_listing_shutdown_race`: Ray
2.60's file listing (the ``ListFiles`` step of ``read_parquet``) ends with a race in which its
completion-signalling thread tries to post stop markers to a pool its consumer has already shut down,
and the thread dies with an ``InterruptedError`` traceback in the job's log after a complete, correct
listing (seen in CI: two demo jobs on two cores). The hook drops exactly that exception from exactly
that thread and function; every other thread exception reaches Python's handler as before.
"""

from __future__ import annotations

import json
import os
import re
from typing import Iterable

__all__ = ["CARRIED", "carried_env", "check_not_secret", "private_ray_env", "quiet_listing_shutdown_race",
           "setup_worker", "start_ray"]

# What stages and their workers read from the environment, none of it secret.
CARRIED = (
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S", "RAY_DATA_DISABLE_PROGRESS_BARS",
    "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION",
    "FSR_PLUGINS", "FSR_CONF_DIR",
)
SETUP_HOOK = "pipelines.ray_runtime.setup_worker"  # the runtime environment's worker_process_setup_hook
_SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_KEY|PRIVATE|CREDENTIAL|SESSION|API_KEY", re.I)
_URI_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^@\s/]+@", re.I)


def check_not_secret(name: str) -> str:
    """``name``, or ``ValueError`` when it looks like a secret's (runtime environments are logged in clear)."""
    if _SECRET_NAME.search(name):
        raise ValueError(f"{name} looks like a secret: a runtime environment is written to Ray's logs in clear text. "
                         "Give it to the cluster's nodes by the cluster's own mechanism (a Kubernetes Secret as an "
                         "environment variable of the Ray pods, an IAM role, the environment of `ray start`)")
    return name


def _job_runtime_env() -> dict:
    """The runtime environment of the Ray job this process is the entrypoint of, else ``{}``."""
    job = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not job:
        return {}
    try:
        runtime_env = json.loads(job).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return {}
    return runtime_env if isinstance(runtime_env, dict) else {}


def carried_env(extra: Iterable[str] = ()) -> dict[str, str]:
    """The variables of :data:`CARRIED` and ``extra`` that are set in this process (values with a
    password in a URI left out), less those a Ray job's own runtime environment already sets."""
    try:
        taken = set(_job_runtime_env().get("env_vars") or {})
    except TypeError:
        taken = set()
    out = {}
    for name in dict.fromkeys([*CARRIED, *extra]):
        check_not_secret(name)
        value = os.environ.get(name)
        if value is not None and name not in taken and not _URI_PASSWORD.search(value):
            out[name] = value
    return out


def start_ray(address: str | None = None, num_cpus: int | None = None, carry_env: Iterable[str] = ()) -> None:
    """Start (or connect to) Ray once per process; see the module docstring. ``carry_env``: more
    variable names to carry to a cluster's workers besides :data:`CARRIED`."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per model load, on the console
    quiet_listing_shutdown_race()
    kwargs: dict = {"ignore_reinit_error": True, "include_dashboard": False, "log_to_driver": True,
                    "address": address or "local",  # "local": private, even beside a `ray start` cluster
                    "runtime_env": {}}
    if "worker_process_setup_hook" not in _job_runtime_env():  # a job's own hook: Ray refuses two
        kwargs["runtime_env"]["worker_process_setup_hook"] = SETUP_HOOK
    if not address and num_cpus:
        kwargs["num_cpus"] = num_cpus
    if address and address != "local":
        env = carried_env(carry_env)
        if env:
            kwargs["runtime_env"]["env_vars"] = env
    ray.init(**kwargs)
    if not address:
        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def private_ray_env() -> dict:
    """``{"env_vars": {"RAY_ADDRESS": <this job's GCS address>}}`` once Ray is initialised, private
    or a cluster (a cluster of several nodes on one machine, beside another job's Ray, has the same
    "multiple active Ray instances" lookup to avoid), else ``{}``."""
    import ray

    if not ray.is_initialized():
        return {}
    try:
        address = ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - a client connection without it: Ray's own lookup then
        return {}
    return {"env_vars": {"RAY_ADDRESS": address}} if address else {}


def _is_listing_shutdown_race(args) -> bool:
    """``threading.excepthook``'s ``args`` are Ray's listing race (module docstring): an
    ``InterruptedError`` in a thread named ``.../completion-signaler`` raised inside
    ``ray/data/_internal/dynamic_work_queue.py``'s ``_signal_completion``."""
    if args.exc_type is not InterruptedError or args.thread is None:
        return False
    if not args.thread.name.endswith("/completion-signaler"):
        return False
    tb = args.exc_traceback
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "_signal_completion" and \
                code.co_filename.replace(os.sep, "/").endswith("ray/data/_internal/dynamic_work_queue.py"):
            return True
        tb = tb.tb_next
    return False


def quiet_listing_shutdown_race() -> None:
    """Install (once per process) a ``threading.excepthook`` that drops Ray's listing race and hands
    every other thread exception to the hook that was there before."""
    import threading

    if getattr(threading.excepthook, "_fsr_listing_race", False):
        return
    previous = threading.excepthook

    def hook(args) -> None:
        if not _is_listing_shutdown_race(args):
            previous(args)

    hook._fsr_listing_race = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def setup_worker() -> None:
    """The job's ``worker_process_setup_hook``: runs in every Ray worker process of the job."""
    quiet_listing_shutdown_race()
