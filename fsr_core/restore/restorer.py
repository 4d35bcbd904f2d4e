"""Restorers: the unit that restoration, evaluation and the model registry handle.

A restorer turns LR face crops (uint8 ``[N,s,s,3]`` RGB, ``s`` = its input size) into restored
crops (uint8 ``[N,s*scale,s*scale,3]``). It is described by a :class:`RestorerCard` (how to run
it: kind, input size, scale, alignment template, value range, colour handling, the method and the
training run it came from) and, unless it is the built-in ``bicubic`` one, by networks. Three kinds:

``feed_forward`` (:class:`FeedForwardRestorer`)
    the card's networks applied in order (step-1 L2H; CR's phi_cr then phi_sr). Run in Ray Data
    actor pools, one load per actor.
``latent_search`` (:class:`LatentSearchRestorer`)
    a search function of :mod:`fsr_core.inversion` (``card.search``) optimises a latent per face
    with the card's networks and ``settings`` (StyleGAN inversion, PULSE, SAIR). Run as batched Ray
    tasks, a batch of faces per search.
``interpolation`` (:class:`BicubicRestorer`)
    MATLAB bicubic upsampling: the baseline every comparison includes, no weights.

Per-face conditions: a card may name columns of :data:`CONDITIONS` that the restorer reads beside
each crop (``conditions``; today ``identity``, the person the face shows: SAIR with ``reference_identity:
given`` takes that person's reference from its pool, as the paper hands it the user's reference).
``restore(lr, conditions={"identity": [...]})`` gives one value per crop; a restorer whose card names a
condition fails, naming it, when it is not given, and the evaluation, comparison and restoration stages
pass the face rows' column of that name. A restorer that names none ignores what is given.

A restorer *bundle* is a folder (what a registered model holds, and what :func:`export_restorer`
makes from a training checkpoint)::

    card.json              the RestorerCard
    networks.json          {name: {"class": registered network name, "kwargs": {...}}}
    weights/<name>.pt      state_dicts, loaded with ``torch.load(weights_only=True)``

Loading rebuilds networks through :func:`fsr_core.networks.build_network` and looks searches up in
an explicit dict: nothing in a bundle is executed.

Colour: networks see RGB in [-1,1] (``x / 127.5 - 1``), outputs go back with
``round((y + 1) * 127.5)`` clipped. ``grey_inputs="grey"`` (the default): a crop whose three
channels are equal (a grey photo) comes back grey (BT.601 luma of the output, replicated),
instead of the colour the network invents for it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from fsr_core.degradation.resize import imresize
from fsr_core.networks import build_network, network_spec

__all__ = [
    "BICUBIC",
    "CONDITIONS",
    "BicubicRestorer",
    "FeedForwardRestorer",
    "FixedConditions",
    "LatentSearchRestorer",
    "Restorer",
    "RestorerCard",
    "export_restorer",
    "images_to_tensor",
    "load_bundle",
    "save_bundle",
    "tensor_to_images",
]

BICUBIC = "bicubic"
"""The name of the built-in baseline restorer (``--model bicubic``)."""
CARD_FILE = "card.json"
NETWORKS_FILE = "networks.json"
CARD_FORMAT = 1
KINDS = ("feed_forward", "latent_search", "interpolation")
CONDITIONS = ("identity",)
"""The per-face columns a restorer card may name in ``conditions`` (face-crop schema columns)."""


@dataclass(frozen=True)
class RestorerCard:
    """How to run a restorer; stored as ``card.json`` beside its weights."""

    kind: Literal["feed_forward", "latent_search", "interpolation"]
    input_size: int
    scale: int
    networks: tuple[str, ...] = ()
    search: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    conditions: tuple[str, ...] = ()
    name: str = ""
    method: str = ""
    alignment: str = "ffhq"
    value_range: tuple[float, float] = (-1.0, 1.0)
    colour: str = "rgb"
    grey_inputs: Literal["grey", "colour"] = "grey"
    weights: Literal["raw", "ema", "none"] = "raw"
    training: dict[str, Any] = field(default_factory=dict)
    format: int = CARD_FORMAT

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"card kind must be one of {KINDS}, got {self.kind!r}")
        if self.input_size < 1 or self.scale < 1:
            raise ValueError(f"input_size and scale must be >= 1, got {self.input_size}, {self.scale}")
        if (self.kind == "interpolation") != (not self.networks):
            raise ValueError("only an interpolation restorer has no networks")
        if (self.kind == "latent_search") != (self.search is not None):
            raise ValueError("a latent_search restorer names its search, and only it")
        if self.grey_inputs not in ("grey", "colour"):
            raise ValueError(f"grey_inputs must be 'grey' or 'colour', got {self.grey_inputs!r}")
        if tuple(self.value_range) != (-1.0, 1.0) or self.colour != "rgb":
            raise ValueError(f"fsr networks take RGB in [-1, 1]; the card says {self.colour} in {self.value_range}")
        if self.format != CARD_FORMAT:
            raise ValueError(f"restorer card format {self.format} is not supported (this fsr reads {CARD_FORMAT})")
        check_conditions(self.conditions)
        if self.conditions and self.kind != "latent_search":
            raise ValueError(f"only a latent_search restorer reads per-face conditions; this {self.kind} card names "
                             f"{list(self.conditions)}")

    @property
    def output_size(self) -> int:
        return self.input_size * self.scale

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["networks"] = list(self.networks)
        if self.conditions:  # left out when empty: bundles without conditions stay readable by older fsr
            out["conditions"] = list(self.conditions)
        else:
            out.pop("conditions")
        out["value_range"] = list(self.value_range)
        out["output_size"] = self.output_size
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RestorerCard":
        data = dict(data)
        data.pop("output_size", None)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown restorer card key(s) {sorted(unknown)}")
        data["networks"] = tuple(data.get("networks", ()))
        data["conditions"] = tuple(data.get("conditions", ()))
        data["value_range"] = tuple(float(v) for v in data.get("value_range", (-1.0, 1.0)))
        return cls(**data)


def check_conditions(names: Any) -> tuple[str, ...]:
    """``names`` as a tuple, each one of :data:`CONDITIONS` (``ValueError`` naming the others)."""
    if isinstance(names, str):
        raise ValueError(f"conditions must be a list of names, got the string {names!r}")
    names = tuple(names)
    unknown = [name for name in names if name not in CONDITIONS]
    if unknown or len(set(names)) != len(names):
        raise ValueError(f"unknown or repeated per-face condition(s) {unknown or list(names)}; "
                         f"known: {list(CONDITIONS)}")
    return names


# ---------------------------------------------------------------------------- conversions
def _check_images(images: np.ndarray, *, name: str = "images") -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{name} must be uint8 [N,H,W,3] RGB, got {images.dtype} {images.shape}")
    return images


def images_to_tensor(images: np.ndarray, *, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 ``[N,H,W,3]`` RGB -> float32 ``[N,3,H,W]`` in ``[-1,1]`` on ``device``."""
    images = _check_images(images)
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """``[N,3,H,W]`` in ``[-1,1]`` -> uint8 ``[N,H,W,3]`` (rounded to nearest, clipped)."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected [N,3,H,W], got shape {tuple(x.shape)}")
    pixels = ((x.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def _grey_rows(images: np.ndarray) -> np.ndarray:
    """``[N]`` bool: crops whose three channels are equal everywhere."""
    return np.all((images[..., 0] == images[..., 1]) & (images[..., 1] == images[..., 2]), axis=(1, 2))


def _to_grey(images: np.ndarray) -> np.ndarray:
    """BT.601 luma (as ``cv2.cvtColor(RGB2GRAY)``), replicated to three channels."""
    luma = images.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return np.repeat(np.clip(np.round(luma), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


# ---------------------------------------------------------------------------- restorers
class Restorer:
    """Base class: ``restore(lr)`` with the card's input checks and colour handling."""

    card: RestorerCard
    device: torch.device = torch.device("cpu")

    def restore(self, lr: np.ndarray, *, batch_size: int = 64, seed: int = 0,
                conditions: Mapping[str, Any] | None = None) -> np.ndarray:
        """uint8 ``[N,s,s,3]`` RGB -> uint8 ``[N,s*scale,s*scale,3]``; ``batch_size`` faces per forward
        or per search; ``seed`` for searches that draw random starts; ``conditions``: per-face values
        (``{name: N values}``) of the conditions the card names (others are ignored)."""
        lr = _check_images(lr, name="lr")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not len(lr):
            return np.zeros((0, lr.shape[1] * self.card.scale, lr.shape[2] * self.card.scale, 3), np.uint8)
        given = self.conditions_for(len(lr), conditions)
        chunks = [self._restore(lr[start:start + batch_size], seed=seed + start,
                                conditions={name: values[start:start + batch_size] for name, values in given.items()})
                  for start in range(0, len(lr), batch_size)]
        out = np.concatenate(chunks)
        if self.card.grey_inputs == "grey":
            grey = _grey_rows(lr)
            if grey.any():
                out[grey] = _to_grey(out[grey])
        return out

    def conditions_for(self, n: int, conditions: Mapping[str, Any] | None) -> dict[str, list[str]]:
        """The card's conditions out of ``conditions``, ``n`` strings each; ``ValueError`` naming a condition
        that is missing, of another length, or empty for a face."""
        given = {}
        for name in self.card.conditions:
            values = None if conditions is None else conditions.get(name)
            if values is None:
                raise ValueError(f"restorer {self.card.name or self.card.search!r} reads the per-face condition "
                                 f"{name!r} (a column of the face rows; fsr restore --{name}), and none was given")
            if isinstance(values, (str, bytes)):
                raise ValueError(f"condition {name!r} needs one value per face (a list), got the single value "
                                 f"{values!r}")
            values = [None if v is None else str(v) for v in list(values)]
            if len(values) != n:
                raise ValueError(f"{len(values)} values of condition {name!r} for {n} faces")
            missing = [i for i, v in enumerate(values) if not v]
            if missing:
                raise ValueError(f"condition {name!r} is empty for {len(missing)} of {n} faces (first: face "
                                 f"{missing[0]} of the batch); restorer {self.card.name or self.card.search!r} "
                                 "needs it for every face")
            given[name] = values
        return given

    def _restore(self, lr: np.ndarray, *, seed: int, conditions: Mapping[str, list[str]]) -> np.ndarray:
        raise NotImplementedError

    def to(self, device: str | torch.device) -> "Restorer":
        self.device = torch.device(device)
        return self


class BicubicRestorer(Restorer):
    """MATLAB bicubic upsampling by ``scale`` (antialiased :func:`~fsr_core.degradation.resize.imresize`)."""

    def __init__(self, *, scale: int = 8, input_size: int = 16) -> None:
        self.card = RestorerCard(kind="interpolation", input_size=input_size, scale=scale, name=BICUBIC,
                                 method=BICUBIC, weights="none", grey_inputs="colour")

    def _restore(self, lr: np.ndarray, *, seed: int, conditions: Mapping[str, list[str]]) -> np.ndarray:
        size = (lr.shape[1] * self.card.scale, lr.shape[2] * self.card.scale)
        return np.stack([imresize(image, output_size=size) for image in lr])


class _NetworkRestorer(Restorer):
    def __init__(self, card: RestorerCard, networks: Mapping[str, nn.Module]) -> None:
        missing = set(card.networks) - set(networks)
        if missing:
            raise ValueError(f"restorer {card.name!r} needs network(s) {sorted(missing)}")
        self.card = card
        self.networks = {name: networks[name].eval().requires_grad_(False) for name in card.networks}
        self.device = next((p.device for net in self.networks.values() for p in net.parameters()),
                           torch.device("cpu"))

    def to(self, device: str | torch.device) -> "Restorer":
        super().to(device)
        for net in self.networks.values():
            net.to(self.device)
        return self


class FeedForwardRestorer(_NetworkRestorer):
    """The card's networks applied in order."""

    @torch.inference_mode()
    def _restore(self, lr: np.ndarray, *, seed: int, conditions: Mapping[str, list[str]]) -> np.ndarray:
        x = images_to_tensor(lr, device=self.device)
        for name in self.card.networks:
            x = self.networks[name](x)
        return tensor_to_images(x)


class LatentSearchRestorer(_NetworkRestorer):
    """``search(networks, lr, seed=..., **settings) -> [N,3,S,S]``, a function of :mod:`fsr_core.inversion`;
    a card that names conditions adds ``conditions={name: N values}``."""

    def __init__(self, card: RestorerCard, networks: Mapping[str, nn.Module]) -> None:
        from fsr_core.inversion import search_function

        super().__init__(card, networks)
        self.search = search_function(card.search)

    def _restore(self, lr: np.ndarray, *, seed: int, conditions: Mapping[str, list[str]]) -> np.ndarray:
        x = images_to_tensor(lr, device=self.device)
        extra = {"conditions": dict(conditions)} if self.card.conditions else {}
        sr = self.search(self.networks, x, seed=seed, **extra, **self.card.settings)
        expected = (len(lr), 3, lr.shape[1] * self.card.scale, lr.shape[2] * self.card.scale)
        if tuple(sr.shape) != expected:
            raise ValueError(f"search {self.card.search!r} returned {tuple(sr.shape)}, expected {expected}")
        return tensor_to_images(sr)


class FixedConditions(Restorer):
    """``restorer`` with the same value of each of ``conditions`` for every face it restores (``fsr restore
    --identity NAME``: an archive of one person); a face's own value passed to ``restore`` takes precedence."""

    def __init__(self, restorer: Restorer, conditions: Mapping[str, str]) -> None:
        check_conditions(list(conditions))
        if not all(isinstance(v, str) and v for v in conditions.values()):
            raise ValueError(f"fixed conditions must be non-empty strings, got {dict(conditions)}")
        self.inner, self.fixed = restorer, dict(conditions)
        self.card, self.device = restorer.card, restorer.device

    @property
    def networks(self) -> Mapping[str, nn.Module]:
        return getattr(self.inner, "networks", {})

    def restore(self, lr: np.ndarray, *, batch_size: int = 64, seed: int = 0,
                conditions: Mapping[str, Any] | None = None) -> np.ndarray:
        given = {name: values if isinstance(values, (str, bytes)) else list(values)  # a single string: refused inside
                 for name, values in (conditions or {}).items() if values is not None}
        for name, value in self.fixed.items():
            if isinstance(given.get(name), (str, bytes)):
                continue
            own = given.get(name, [None] * len(lr))
            given[name] = [v if v is not None and str(v) else value for v in own]
        return self.inner.restore(lr, batch_size=batch_size, seed=seed, conditions=given)

    def to(self, device: str | torch.device) -> "Restorer":
        self.inner.to(device)
        self.device = self.inner.device
        return self


_CLASSES = {"feed_forward": FeedForwardRestorer, "latent_search": LatentSearchRestorer}


# ---------------------------------------------------------------------------- bundles
def save_bundle(folder: str, card: RestorerCard, networks: Mapping[str, nn.Module]) -> str:
    """Write a restorer bundle (see the module docstring); ``networks.json`` last."""
    os.makedirs(os.path.join(folder, "weights"), exist_ok=True)
    specs = {}
    for name in card.networks:
        module = getattr(networks[name], "module", networks[name])
        specs[name] = network_spec(module)
        torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()},
                   os.path.join(folder, "weights", f"{name}.pt"))
    with open(os.path.join(folder, CARD_FILE), "w") as fh:
        json.dump(card.to_dict(), fh, indent=2, sort_keys=True)
    with open(os.path.join(folder, NETWORKS_FILE), "w") as fh:
        json.dump(specs, fh, indent=2, sort_keys=True)
    return folder


def read_card(folder: str) -> RestorerCard:
    path = os.path.join(folder, CARD_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"not a restorer bundle (no {CARD_FILE}): {folder}")
    with open(path) as fh:
        return RestorerCard.from_dict(json.load(fh))


def load_bundle(folder: str, *, device: str | torch.device = "cpu") -> Restorer:
    """The restorer of a bundle folder, in eval mode on ``device``."""
    card = read_card(folder)
    if card.kind == "interpolation":
        return BicubicRestorer(scale=card.scale, input_size=card.input_size)
    with open(os.path.join(folder, NETWORKS_FILE)) as fh:
        specs = json.load(fh)
    networks = {}
    for name in card.networks:
        if name not in specs:
            raise ValueError(f"restorer bundle {folder} has no network {name!r} (it has {sorted(specs)})")
        network = build_network(specs[name])
        network.load_state_dict(torch.load(os.path.join(folder, "weights", f"{name}.pt"), map_location="cpu",
                                           weights_only=True))
        networks[name] = network
    return _CLASSES[card.kind](card, networks).to(device)


def export_restorer(checkpoint_dir: str, name: str, folder: str, *, ema: bool = False, alignment: str = "ffhq",
                    grey_inputs: str = "grey", training: Mapping[str, Any] | None = None) -> RestorerCard:
    """Make the bundle of restorer ``name`` that a (local) checkpoint folder exports
    (``restorers.json``), with its networks' weights (``ema``: the EMA copies)."""
    from fsr_core.training import checkpoint as ckpt

    exports = ckpt.load_restorer_specs(checkpoint_dir)
    if name not in exports:
        raise KeyError(f"checkpoint {checkpoint_dir} exports no restorer {name!r}; it exports {sorted(exports)}")
    spec = exports[name]
    state = ckpt.load_train_state(checkpoint_dir)
    card = RestorerCard(
        kind=spec["kind"], input_size=int(spec["input_size"]), scale=int(spec["scale"]),
        networks=tuple(spec["networks"]), search=spec.get("search"), settings=dict(spec.get("settings") or {}),
        conditions=tuple(spec.get("conditions") or ()), name=name, method=str(state.get("objective", "")),
        alignment=alignment, grey_inputs=grey_inputs,
        weights="ema" if ema else "raw",
        training={"step": state.get("step"), "run_id": state.get("mlflow_run_id"),
                  "objective_config": state.get("objective_config"), **(training or {})},
    )
    networks = ckpt.load_networks(checkpoint_dir, names=list(card.networks), ema=ema)
    save_bundle(folder, card, networks)
    return card
