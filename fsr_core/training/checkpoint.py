"""Checkpoint folders: weights + constructor arguments as JSON + optimizer and train state.

Layout of a checkpoint folder::

    networks.json          {"l2h": {"class": "l2h_generator", "kwargs": {...}}, ...}
    weights/<name>.pt      state_dict of each network (unwrapped from DDP), tensors only
    weights/<name>.ema.pt  EMA weights where the objective keeps them (optional)
    optimizers.pt          {optimizer name: state_dict} (optional: absent in export-only folders)
    train_state.json       {"step": int, "epoch": int, ...} (anything JSON-able)

Nothing is pickled code: networks are rebuilt from ``networks.json`` through an
explicit class dict and weights load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import torch
from torch import nn

__all__ = ["save_checkpoint", "load_networks", "load_train_state", "load_optimizers", "unwrap", "network_spec"]

NETWORKS_FILE = "networks.json"
TRAIN_STATE_FILE = "train_state.json"
OPTIMIZERS_FILE = "optimizers.pt"


def unwrap(module: nn.Module) -> nn.Module:
    """The network inside a DDP/DataParallel wrapper (or the module itself)."""
    return getattr(module, "module", module)


def network_spec(network: nn.Module, class_name: str) -> dict[str, Any]:
    """``{"class": class_name, "kwargs": network.config}``; networks keep their constructor args in ``.config``."""
    config = getattr(unwrap(network), "config", None)
    if not isinstance(config, Mapping):
        raise ValueError(f"{type(unwrap(network)).__name__} has no .config dict of constructor arguments")
    return {"class": class_name, "kwargs": json.loads(json.dumps(dict(config)))}


def save_checkpoint(
    folder: str,
    *,
    networks: Mapping[str, tuple[str, nn.Module]],
    train_state: Mapping[str, Any],
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    ema: Mapping[str, nn.Module] | None = None,
) -> str:
    """Write a checkpoint folder. ``networks`` maps a name to ``(class name, module)``."""
    os.makedirs(os.path.join(folder, "weights"), exist_ok=True)
    specs = {}
    for name, (class_name, module) in networks.items():
        specs[name] = network_spec(module, class_name)
        torch.save(_cpu_state(unwrap(module)), os.path.join(folder, "weights", f"{name}.pt"))
    for name, module in (ema or {}).items():
        torch.save(_cpu_state(unwrap(module)), os.path.join(folder, "weights", f"{name}.ema.pt"))
    with open(os.path.join(folder, NETWORKS_FILE), "w") as fh:
        json.dump(specs, fh, indent=2, sort_keys=True)
    with open(os.path.join(folder, TRAIN_STATE_FILE), "w") as fh:
        json.dump(dict(train_state), fh, indent=2, sort_keys=True)
    if optimizers:
        torch.save({name: opt.state_dict() for name, opt in optimizers.items()}, os.path.join(folder, OPTIMIZERS_FILE))
    return folder


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def load_networks(
    folder: str,
    classes: Mapping[str, type[nn.Module]],
    *,
    names: list[str] | None = None,
    ema: bool = False,
    map_location: str | torch.device = "cpu",
) -> dict[str, nn.Module]:
    """Rebuild networks from a checkpoint folder; ``classes`` maps class names to ``nn.Module`` types."""
    path = os.path.join(folder, NETWORKS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"not a checkpoint folder (no {NETWORKS_FILE}): {folder}")
    with open(path) as fh:
        specs = json.load(fh)
    wanted = names if names is not None else list(specs)
    out = {}
    for name in wanted:
        if name not in specs:
            raise KeyError(f"checkpoint {folder} has no network {name!r}; it has {sorted(specs)}")
        spec = specs[name]
        cls = classes.get(spec["class"])
        if cls is None:
            raise KeyError(f"unknown network class {spec['class']!r}; known: {sorted(classes)}")
        network = cls(**spec["kwargs"])
        weights = os.path.join(folder, "weights", f"{name}{'.ema' if ema else ''}.pt")
        network.load_state_dict(torch.load(weights, map_location=map_location, weights_only=True))
        out[name] = network
    return out


def load_train_state(folder: str) -> dict[str, Any]:
    with open(os.path.join(folder, TRAIN_STATE_FILE)) as fh:
        return json.load(fh)


def load_optimizers(folder: str, optimizers: Mapping[str, torch.optim.Optimizer], *, map_location="cpu") -> None:
    """Load optimizer states in place (absent file: nothing to load)."""
    path = os.path.join(folder, OPTIMIZERS_FILE)
    if not os.path.isfile(path):
        return
    states = torch.load(path, map_location=map_location, weights_only=True)
    for name, opt in optimizers.items():
        if name in states:
            opt.load_state_dict(states[name])
