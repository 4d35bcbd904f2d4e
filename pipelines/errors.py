"""The root cause of a failed stage: the first failure, not the wrapper Ray put around it.

A stage's error reaches the driver wrapped: a ``RayTaskError`` around what the stage raised, which
may itself be Ray Train's ``TrainingFailedError`` (``WorkerGroupError``: a dict of worker ranks to
their errors; ``ControllerError``: the controller's), or Ray Data's ``UserCodeException``, whose
message ends in a hint about retry settings, and whose original exception survives only in the
traceback text ("... was the direct cause of the following exception"). :func:`root_cause`
unwraps the objects as far as they go and then reads the text, and returns ``"Type: message"`` of
the first failure.
"""

from __future__ import annotations

import re

__all__ = ["root_cause"]

# exceptions that only carry another one (matched on the class name, with or without its module)
_WRAPPERS = ("RayTaskError", "UserCodeException", "TrainingFailedError", "WorkerGroupError", "ControllerError",
             "RayTaskError(", "ActorDiedError", "TaskCancelledError")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*(?:\([\w.]+\))?)(?::\s?(?P<message>.*))?$")
_EXCEPTION_SUFFIXES = ("Error", "Exception", "Failure", "Interrupt", "Exit", "Timeout", "Warning")


def _is_wrapper(name: str) -> bool:
    short = name.rsplit(".", 1)[-1]
    return short.startswith("RayTaskError") or short in _WRAPPERS


def _unwrap(exc: BaseException, depth: int = 0) -> BaseException:
    """The innermost exception the objects lead to (Ray's cause, Train's first worker failure or its
    controller's failure, ``__cause__``)."""
    if depth > 20:
        return exc
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc and type(exc).__name__.startswith("RayTaskError"):
        return _unwrap(cause, depth + 1)
    failures = getattr(exc, "worker_failures", None)
    if isinstance(failures, dict) and failures:
        return _unwrap(failures[min(failures)], depth + 1)
    controller = getattr(exc, "controller_failure", None)
    if isinstance(controller, BaseException):
        return _unwrap(controller, depth + 1)
    if exc.__cause__ is not None:
        return _unwrap(exc.__cause__, depth + 1)
    return exc


def _first_line(text: str) -> str:
    for line in _ANSI.sub("", text).splitlines():
        if line.strip():
            return line.strip()
    return ""


def _from_text(text: str) -> str | None:
    """The first exception line of a (remote, chained) traceback that is not one of Ray's wrappers."""
    for raw in _ANSI.sub("", text).splitlines():
        line = raw.rstrip()
        if not line or line[0].isspace():
            continue  # traceback frames and code are indented
        match = _EXCEPTION_LINE.match(line)
        if not match:
            continue
        name = match.group("type")
        if not name.split("(")[0].endswith(_EXCEPTION_SUFFIXES) or _is_wrapper(name.split("(")[0]):
            continue
        short = name.split("(")[0].rsplit(".", 1)[-1]
        message = (match.group("message") or "").strip()
        return f"{short}: {message}" if message else short
    return None


def root_cause(exc: BaseException) -> str:
    """``"Type: first line of the message"`` of the first failure inside ``exc`` (see the module docstring)."""
    inner = _unwrap(exc)
    name = type(inner).__name__
    if not _is_wrapper(name):
        message = _first_line(str(inner))
        return f"{name}: {message}" if message else name
    found = _from_text(str(exc))
    if found:
        return found
    message = _first_line(str(inner))
    return f"{name}: {message}" if message else name
