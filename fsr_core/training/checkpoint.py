"""Checkpoint folders: weights + constructor arguments as JSON + optimizer, objective and train state.

Layout of a checkpoint folder::

    networks.json          {"l2h": {"class": "l2h_generator", "kwargs": {...}}, ...}
    weights/<name>.pt      state_dict of each network (unwrapped from DDP), tensors only
    weights/<name>.ema.pt  EMA weights where the objective keeps them (optional)
    optimizers.pt          {optimizer name: state_dict} (optional: absent in export-only folders)
    objective_state.pt     the objective's own state: growth level, schedules, counters, RNG (optional)
    restorers.json         the restorers the objective exports: {name: RestorerSpec fields} (optional)
    train_state.json       {"step": int, "epoch": int, ...} (anything JSON-able)

Nothing is pickled code: networks are rebuilt from ``networks.json`` through
:func:`fsr_core.networks.build_network` (the one rebuild path, shared with restorer bundles) and
every ``.pt`` file loads with ``torch.load(weights_only=True)`` (tensors, numbers, strings, lists
and dicts only). ``networks.json`` is written last, so a folder that has it is complete.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import torch
from torch import nn

from fsr_core.networks import build_network, network_spec

__all__ = [
    "NETWORKS_FILE",
    "cpu_state",
    "load_network_specs",
    "load_networks",
    "load_objective_state",
    "load_optimizers",
    "load_restorer_specs",
    "load_train_state",
    "save_checkpoint",
    "unwrap",
    "weights_path",
]

NETWORKS_FILE = "networks.json"
TRAIN_STATE_FILE = "train_state.json"
OPTIMIZERS_FILE = "optimizers.pt"
OBJECTIVE_STATE_FILE = "objective_state.pt"
RESTORERS_FILE = "restorers.json"


def unwrap(module: nn.Module) -> nn.Module:
    """The network inside a DDP/DataParallel wrapper (or the module itself)."""
    return getattr(module, "module", module)


def weights_path(folder: str, name: str, *, ema: bool = False) -> str:
    return os.path.join(folder, "weights", f"{name}{'.ema' if ema else ''}.pt")


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in unwrap(module).state_dict().items()}


def save_checkpoint(
    folder: str,
    *,
    networks: Mapping[str, nn.Module],
    train_state: Mapping[str, Any],
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    ema: Mapping[str, nn.Module] | None = None,
    objective_state: Mapping[str, Any] | None = None,
    restorers: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """Write a checkpoint folder; ``networks`` maps a name to a registered network (DDP-wrapped or not)."""
    os.makedirs(os.path.join(folder, "weights"), exist_ok=True)
    specs = {}
    for name, module in networks.items():
        specs[name] = network_spec(unwrap(module))
        torch.save(cpu_state(module), weights_path(folder, name))
    for name, module in (ema or {}).items():
        torch.save(cpu_state(module), weights_path(folder, name, ema=True))
    with open(os.path.join(folder, TRAIN_STATE_FILE), "w") as fh:
        json.dump(dict(train_state), fh, indent=2, sort_keys=True)
    if optimizers:
        torch.save({name: opt.state_dict() for name, opt in optimizers.items()}, os.path.join(folder, OPTIMIZERS_FILE))
    if objective_state:
        torch.save(dict(objective_state), os.path.join(folder, OBJECTIVE_STATE_FILE))
    if restorers:
        with open(os.path.join(folder, RESTORERS_FILE), "w") as fh:
            json.dump({k: dict(v) for k, v in restorers.items()}, fh, indent=2, sort_keys=True)
    with open(os.path.join(folder, NETWORKS_FILE), "w") as fh:  # last: marks the folder complete
        json.dump(specs, fh, indent=2, sort_keys=True)
    return folder


def load_network_specs(folder: str) -> dict[str, dict[str, Any]]:
    path = os.path.join(folder, NETWORKS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"not a checkpoint folder (no {NETWORKS_FILE}): {folder}")
    with open(path) as fh:
        return json.load(fh)


def load_networks(
    folder: str,
    *,
    names: list[str] | None = None,
    ema: bool = False,
    map_location: str | torch.device = "cpu",
) -> dict[str, nn.Module]:
    """Rebuild networks of a checkpoint folder (all, or ``names``) with their weights (or EMA weights)."""
    specs = load_network_specs(folder)
    out = {}
    for name in names if names is not None else list(specs):
        if name not in specs:
            raise KeyError(f"checkpoint {folder} has no network {name!r}; it has {sorted(specs)}")
        network = build_network(specs[name])
        path = weights_path(folder, name, ema=ema)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint {folder} has no {'EMA ' if ema else ''}weights for {name!r}: {path}")
        network.load_state_dict(torch.load(path, map_location=map_location, weights_only=True))
        out[name] = network
    return out


def load_train_state(folder: str) -> dict[str, Any]:
    with open(os.path.join(folder, TRAIN_STATE_FILE)) as fh:
        return json.load(fh)


def load_objective_state(folder: str) -> dict[str, Any]:
    """The objective's own state (empty when the folder has none)."""
    path = os.path.join(folder, OBJECTIVE_STATE_FILE)
    if not os.path.isfile(path):
        return {}
    return torch.load(path, map_location="cpu", weights_only=True)


def load_restorer_specs(folder: str) -> dict[str, dict[str, Any]]:
    """The restorers a checkpoint exports (empty when it lists none)."""
    path = os.path.join(folder, RESTORERS_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as fh:
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
