"""Starting Ray for an fsr command, so that two fsr jobs can share a machine.

:func:`start_ray` starts a private local Ray (``address=None``) or connects to a cluster. A private
instance gets ``RAY_ADDRESS`` set to itself in this process, and :func:`private_ray_env` is the
runtime environment that passes it on to the tasks a command submits (every task and actor they
start inherits it): Ray Train's controller and its placement-group cleaner look Ray up by address,
and with another fsr job's Ray on the same machine an unnamed lookup finds two instances and fails.
Ray Data's own progress bars are turned off (the console draws the job's). Worker processes of a
private instance inherit this process's environment when Ray starts; nothing is copied into a
runtime environment (a runtime environment is written to Ray's logs in clear text, so no secret
may travel in one).
"""

from __future__ import annotations

import os

__all__ = ["private_ray_env", "start_ray"]


def start_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Start (or connect to) Ray once per process; see the module docstring."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    kwargs: dict = {"ignore_reinit_error": True, "include_dashboard": False, "log_to_driver": True,
                    "address": address or "local"}  # "local": private, even beside a `ray start` cluster
    if not address and num_cpus:
        kwargs["num_cpus"] = num_cpus
    ray.init(**kwargs)
    if not address:
        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def private_ray_env() -> dict:
    """``{"env_vars": {"RAY_ADDRESS": ...}}`` on a private Ray started by :func:`start_ray`, else ``{}``."""
    import ray

    address = os.environ.get("RAY_ADDRESS")
    if address and ray.is_initialized() and address == ray.get_runtime_context().gcs_address:
        return {"env_vars": {"RAY_ADDRESS": address}}
    return {}
