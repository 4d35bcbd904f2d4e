"""Constructor arguments recorded by shared machinery (diffusers' ``register_to_config``, no decorator).

:func:`record_arguments` wraps a class's ``__init__`` so that the outermost constructor call
stores its keyword arguments, defaults filled in, as a JSON-able dict in ``self.config``. Networks
(:class:`fsr_core.networks.base.Network`) and training objectives
(:class:`fsr_core.training.objective.Objective`) call it from ``__init_subclass__``; nobody writes
``self.config`` by hand.
"""

from __future__ import annotations

import functools
import inspect
import json
from typing import Any

__all__ = ["jsonable", "record_arguments"]


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (tuples -> lists); ``TypeError`` naming what is not JSON."""
    try:
        return json.loads(json.dumps(value))
    except TypeError as exc:
        raise TypeError(f"not JSON-able: {value!r} ({exc})") from None


def record_arguments(cls: type, *, exclude: tuple[str, ...] = ()) -> None:
    """Wrap ``cls.__init__`` (when the class defines one) to record its arguments in ``self.config``.

    The constructor must take keyword-only arguments (``TypeError`` otherwise). Only the outermost
    constructor of an instance records: a subclass that calls ``super().__init__(...)`` with other
    arguments keeps its own record. ``exclude``: arguments not recorded (a device, say).
    """
    if "__init__" not in cls.__dict__:
        return
    original = cls.__init__
    signature = inspect.signature(original)
    positional = [
        name for name, p in list(signature.parameters.items())[1:]
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    if positional:
        raise TypeError(f"{cls.__name__}.__init__ must take keyword-only arguments, not {positional}")
    self_name = next(iter(signature.parameters))

    @functools.wraps(original)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        outermost = "_fsr_recording" not in self.__dict__
        if outermost:
            object.__setattr__(self, "_fsr_recording", True)
        try:
            original(self, *args, **kwargs)
        finally:
            if outermost:
                del self.__dict__["_fsr_recording"]
        if outermost:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            arguments.pop(self_name)
            for name, p in signature.parameters.items():
                if p.kind is p.VAR_KEYWORD:
                    arguments.update(arguments.pop(name, {}))
            for name in exclude:
                arguments.pop(name, None)
            object.__setattr__(self, "config", jsonable(arguments))

    cls.__init__ = __init__  # type: ignore[method-assign]
