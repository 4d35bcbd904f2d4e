"""The objective contract: what a method implements and the training loop calls.

As in StyleGAN2-ADA's ``loss.py``, a method's *objective* owns its networks, optimizers, EMA
copies, every loss term and weight, and its own state; the loop (:mod:`fsr_core.training.loop`)
only iterates, checkpoints, reports and logs, and imports no method.

A method subclasses :class:`Objective` and declares:

``datasets(config)`` (classmethod)
    the named data sets a step reads and, for each, a :class:`DataSpec`: the columns
    (``image``, ``identity``, ``attributes``, ``landmarks``) and the image size. The first one is
    the epoch stream; the others are cycled. A batch is ``{dataset: {column: tensor}}``: images
    ``[N,3,S,S]`` float in [-1,1], ``identity`` int64 ``[N]`` (index into the data set's sorted
    identities, -1 when a row has none; ``data_info[dataset]["num_identities"]`` classes),
    ``attributes`` float32 ``[N,K]`` (the spec's attribute names, 0/1), ``landmarks`` float32
    ``[N,10]`` in pixels of the resized crop.
``__init__(*, ..., device, data_info)``
    builds ``self.networks`` (every network by name), names the ``trained`` ones (those saved and
    optimised) and the ``kept`` ones (frozen networks the objective applies, e.g. a fixed
    degradation network initialised from another stage's checkpoint: saved with the checkpoint
    and restored on resume, never optimised), their ``self.optimizers`` and ``self.ema`` copies;
    keyword arguments only, recorded in ``self.config`` by shared machinery
    (:func:`~fsr_core.arguments.record_arguments`).
``train_step(batch, *, step)``
    one optimisation step; returns float losses for the logs.
``sample(batch, *, seed)``
    images for a sample grid: ``{row name: [N,3,h,w] in [-1,1]}``.
``exports()``
    the restorers a checkpoint of this objective can become: ``{name: RestorerSpec}``.

and may override:

``on_step(step)``
    the step-boundary hook, called before each step: may rebuild networks (progressive growth),
    their optimizers and EMA copies; returns True when it changed networks, so the loop re-wraps
    them for DDP (:meth:`wrap`).
``state_dict()`` / ``load_state_dict(state)``
    the objective's own state (growth level, schedules, regulariser counters, RNG), saved in the
    checkpoint folder (``objective_state.pt``: tensors, numbers, strings, lists, dicts) and
    restored *before* the weights, so that a grown objective rebuilds its networks to the saved
    shape first.
``init_network(name, source)``
    how a network is initialised from another checkpoint's network (default: same class and
    constructor arguments, all weights).

Everything else is shared here: saving and loading checkpoint folders, initialisation from several
named checkpoints network by network (:meth:`init_from`), EMA updates, DDP wrapping.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from fsr_core.arguments import record_arguments
from fsr_core.training import checkpoint as ckpt

__all__ = ["COLUMNS", "DataSpec", "Objective", "RestorerSpec", "batch_image"]

COLUMNS = ("image", "identity", "attributes", "landmarks")
"""Columns an objective can read from a face-crop data set."""


def batch_image(batch: Mapping[str, Mapping[str, Tensor]], name: str, size: int, device: torch.device) -> Tensor:
    """``batch[name]["image"]`` on ``device``; ``ValueError`` unless it is float ``[N,3,size,size]``
    (what a training step of any method reads from a data input)."""
    if name not in batch or "image" not in batch[name]:
        raise ValueError(f"the step needs batch[{name!r}]['image']; got keys {sorted(batch)}")
    x = batch[name]["image"]
    ok = isinstance(x, Tensor) and x.is_floating_point() and x.ndim == 4 and x.shape[1] == 3 and x.shape[0] >= 1
    if not (ok and tuple(x.shape[2:]) == (size, size)):
        raise ValueError(f"batch[{name!r}]['image'] must be a float tensor [N,3,{size},{size}] in [-1,1], got "
                         f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
    return x.to(device)


@dataclass(frozen=True)
class DataSpec:
    """What an objective reads from one named data set.

    ``size``: the side crops are resized to (``None``: the stored size, which must then be the same
    for every row); ``columns``: a subset of :data:`COLUMNS` with ``image``; ``attributes``: the
    attribute names of the ``attributes`` column, in order."""

    size: int | None
    columns: tuple[str, ...] = ("image",)
    attributes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = set(self.columns) - set(COLUMNS)
        if unknown or "image" not in self.columns:
            raise ValueError(f"columns must include 'image' and come from {COLUMNS}, got {self.columns}")
        if bool(self.attributes) != ("attributes" in self.columns):
            raise ValueError("attribute names go with the 'attributes' column, and only with it")
        if self.size is not None and self.size < 1:
            raise ValueError(f"size must be >= 1, got {self.size}")


@dataclass(frozen=True)
class RestorerSpec:
    """A restorer an objective exports: which of its networks, how they run, what they expect.

    ``kind="feed_forward"``: the ``networks`` are applied in order to the LR input (``[N,3,s,s]``
    in [-1,1], ``s = input_size``), the last one giving ``[N,3,s*scale,s*scale]``.
    ``kind="latent_search"``: ``search`` names a function of :mod:`fsr_core.inversion` that
    restores a batch with these networks and ``settings``, given the per-face ``conditions`` it names
    (:data:`fsr_core.restore.restorer.CONDITIONS`)."""

    kind: Literal["feed_forward", "latent_search"]
    networks: tuple[str, ...]
    input_size: int
    scale: int
    search: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    conditions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("feed_forward", "latent_search"):
            raise ValueError(f"kind must be feed_forward or latent_search, got {self.kind!r}")
        if not self.networks:
            raise ValueError("a restorer needs at least one network")
        if (self.kind == "latent_search") != (self.search is not None):
            raise ValueError("a latent_search restorer names its search, and only it")
        if self.input_size < 1 or self.scale < 1:
            raise ValueError(f"input_size and scale must be >= 1, got {self.input_size}, {self.scale}")
        if self.conditions:
            from fsr_core.restore.restorer import check_conditions

            check_conditions(self.conditions)
            if self.kind != "latent_search":
                raise ValueError("only a latent_search restorer reads per-face conditions")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["networks"] = list(self.networks)
        if self.conditions:
            out["conditions"] = list(self.conditions)
        else:
            out.pop("conditions")
        return out


class Objective:
    """Base class of every method's objective; see the module docstring for the contract."""

    config: dict[str, Any]
    #: the loss the console shows while training (default: the first one ``train_step`` returns)
    progress_loss: ClassVar[str | None] = None
    #: constructor arguments that are not part of ``config`` (where it runs, what the data holds)
    RUNTIME_ARGUMENTS: ClassVar[tuple[str, ...]] = ("device", "data_info")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        record_arguments(cls, exclude=cls.RUNTIME_ARGUMENTS)

    def __init__(self, *, device: str | torch.device = "cpu", data_info: Mapping[str, Any] | None = None) -> None:
        self.device = torch.device(device)
        self.data_info: dict[str, Any] = dict(data_info or {})
        self.networks: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.ema: dict[str, nn.Module] = {}
        self.trained: tuple[str, ...] = ()
        self.kept: tuple[str, ...] = ()
        self._train_modules: dict[str, nn.Module] = {}

    # ------------------------------------------------------------------ declared by each method
    @classmethod
    def datasets(cls, config: Mapping[str, Any]) -> dict[str, DataSpec]:
        """The data sets (in order; the first is the epoch stream) for constructor arguments ``config``."""
        raise NotImplementedError

    def train_step(self, batch: Mapping[str, Mapping[str, Tensor]], *, step: int) -> dict[str, float]:
        raise NotImplementedError

    def sample(self, batch: Mapping[str, Mapping[str, Tensor]], *, seed: int = 0) -> dict[str, Tensor]:
        raise NotImplementedError

    def exports(self) -> dict[str, RestorerSpec]:
        return {}

    # ------------------------------------------------------------------ optional hooks
    def on_step(self, step: int) -> bool:
        """Before step ``step + 1`` (``step`` steps done); True when networks were rebuilt."""
        return False

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, but the checkpoint has {sorted(state)}")

    def init_network(self, name: str, source: nn.Module) -> None:
        """Initialise network ``name`` from ``source`` (a network of another checkpoint)."""
        target = self.networks[name]
        if type(source) is not type(target) or dict(source.config) != dict(target.config):
            raise ValueError(
                f"network {name!r} is {type(target).__name__}{target.config}, the source is "
                f"{type(source).__name__}{source.config}"
            )
        target.load_state_dict(source.state_dict())

    # ------------------------------------------------------------------ shared machinery
    def set_trained(self, names: tuple[str, ...], *, kept: tuple[str, ...] = ()) -> None:
        """Declare the trained networks: train mode and gradients on; the others frozen in eval mode.
        ``kept``: frozen networks that checkpoints still carry (saved, and restored by :meth:`load`),
        because the objective applies them and a resumed run has no other source for them."""
        unknown = (set(names) | set(kept)) - set(self.networks)
        if unknown:
            raise ValueError(f"unknown network(s) {sorted(unknown)}; known: {sorted(self.networks)}")
        if set(names) & set(kept):
            raise ValueError(f"network(s) {sorted(set(names) & set(kept))} cannot be both trained and kept frozen")
        self.trained = tuple(names)
        self.kept = tuple(kept)
        self._train_modules = {name: self.networks[name] for name in self.trained}
        for name, net in self.networks.items():
            net.train(name in self.trained)
            net.requires_grad_(name in self.trained)

    def module(self, name: str) -> nn.Module:
        """The module that trains network ``name``: the network, or what :meth:`wrap` made of it (DDP)."""
        return self._train_modules.get(name, self.networks[name])

    def wrap(self, fn: Callable[[nn.Module], nn.Module]) -> None:
        """Replace each trained network, for training only, by ``fn(network)`` (e.g. DDP)."""
        for name in self.trained:
            self._train_modules[name] = fn(self.networks[name])

    def replace_network(self, name: str, network: nn.Module) -> None:
        """Put a rebuilt network in place of ``name`` (growth); the caller rebuilds its optimizer,
        and the loop re-wraps it when :meth:`on_step` returns True."""
        self.networks[name] = network.to(self.device)
        self._train_modules[name] = self.networks[name]
        trained = name in self.trained
        network.train(trained)
        network.requires_grad_(trained)

    def make_ema(self, name: str) -> nn.Module:
        """A frozen eval-mode copy of network ``name`` kept as its EMA (``self.ema[name]``)."""
        copy_ = copy.deepcopy(self.networks[name]).eval().requires_grad_(False)
        self.ema[name] = copy_
        return copy_

    @torch.no_grad()
    def update_ema(self, name: str, *, beta: float) -> None:
        """``ema = beta * ema + (1 - beta) * network`` for parameters; buffers are copied."""
        source, target = self.networks[name], self.ema[name]
        for p_ema, p in zip(target.parameters(), source.parameters()):
            p_ema.lerp_(p.detach(), 1.0 - beta)
        for b_ema, b in zip(target.buffers(), source.buffers()):
            b_ema.copy_(b)

    def save(self, folder: str, *, train_state: Mapping[str, Any]) -> str:
        """Write a checkpoint folder: trained and kept networks, the EMA copies and optimizers of the
        trained ones, the objective's own state, the restorers it exports and ``train_state``."""
        return ckpt.save_checkpoint(
            folder,
            networks={name: self.networks[name] for name in self.trained + self.kept},
            ema={name: net for name, net in self.ema.items() if name in self.trained},
            optimizers=self.optimizers,
            objective_state=self.state_dict(),
            restorers={name: spec.to_dict() for name, spec in self.exports().items()},
            train_state=train_state,
        )

    def load(self, folder: str) -> dict[str, Any]:
        """Restore a checkpoint of this objective to continue training: its own state first (which
        may rebuild networks), then the trained and kept networks' weights and EMA weights (their
        constructor arguments must match), then the optimizers. Returns the train state."""
        self.load_state_dict(ckpt.load_objective_state(folder))
        specs = ckpt.load_network_specs(folder)
        missing = set(self.trained + self.kept) - set(specs)
        if missing:
            raise ValueError(f"checkpoint {folder} lacks trained or kept network(s) {sorted(missing)}")
        for name in self.trained + self.kept:
            network = self.networks[name]
            if specs[name]["kwargs"] != network.config:
                raise ValueError(
                    f"checkpoint {folder} network {name!r} has arguments {specs[name]['kwargs']}, "
                    f"this objective built {network.config}"
                )
            network.load_state_dict(torch.load(ckpt.weights_path(folder, name), map_location=self.device,
                                               weights_only=True))
            if name in self.ema:
                path = ckpt.weights_path(folder, name, ema=True)
                source = path if os.path.isfile(path) else ckpt.weights_path(folder, name)
                self.ema[name].load_state_dict(torch.load(source, map_location=self.device, weights_only=True))
        ckpt.load_optimizers(folder, self.optimizers, map_location=self.device)
        return ckpt.load_train_state(folder)

    def init_from(self, sources: Mapping[str, tuple[str, str]]) -> list[str]:
        """Initialise networks from other checkpoints, network by network: ``sources`` maps a
        network of this objective to ``(checkpoint folder, network name in it)``. Weights only (no
        optimizer state, no step); an EMA copy starts from the source's EMA weights when it has
        them. Returns the names initialised."""
        unknown = set(sources) - set(self.networks)
        if unknown:
            raise ValueError(f"unknown network name(s) {sorted(unknown)}; known: {sorted(self.networks)}")
        for name, (folder, source_name) in sources.items():
            source = ckpt.load_networks(folder, names=[source_name])[source_name]
            self.init_network(name, source)
            if name in self.ema:
                ema_path = ckpt.weights_path(folder, source_name, ema=True)
                state = (torch.load(ema_path, map_location="cpu", weights_only=True) if os.path.isfile(ema_path)
                         else self.networks[name].state_dict())
                self.ema[name].load_state_dict(state)
        return list(sources)
