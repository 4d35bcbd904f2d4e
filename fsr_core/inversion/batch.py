"""Inverting a batch of faces into a generator's latent space: the unit of work of the batched inversion
tasks (:mod:`pipelines.inversion_job`).

:class:`BatchInverter` loads the generator (a ``stylegan2_prior`` checkpoint's ``generator``, its EMA
weights by default) and optionally step 1's L2H once, and maps a batch ``{"id", "image", "set", "seed",
"step1"}`` (uint8 ``[n,s,s,3]`` crops; ``step1`` rows are LR crops that go through the L2H first, so their
target is the MR image) to one row per face: its W and/or W+ code (flattened float32), projection error
and steps, in one optimisation loop for the whole batch (:func:`~fsr_core.inversion.projection.project`,
per-face seeds and early stop). Without Ray: the job decides where it runs.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from fsr_core.inversion.latent import latent_statistics
from fsr_core.inversion.two_step import ProjectionSettings
from fsr_core.restore.restorer import images_to_tensor

__all__ = ["BatchInverter", "load_checkpoint_network"]

SPACES = ("w", "w_plus")


def load_checkpoint_network(checkpoint: str, name: str, *, ema: bool, device: str | torch.device = "cpu"):
    """Network ``name`` of a checkpoint folder (local or ``s3://``), eval mode, frozen, on ``device``."""
    from fsr_core import storage
    from fsr_core.training.checkpoint import load_networks

    if storage.is_s3(checkpoint):  # the networks and their weights only
        local = tempfile.mkdtemp(prefix="fsr-inversion-")
        for info in storage.list_files(checkpoint):
            rel = info.uri[len(checkpoint.rstrip("/")) + 1:]
            if rel == "networks.json" or rel.startswith("weights/"):
                storage.download_file(info.uri, os.path.join(local, *rel.split("/")))
        checkpoint = local
    network = load_networks(os.fspath(checkpoint), names=[name], ema=ema)[name]
    return network.to(device).eval().requires_grad_(False)


class BatchInverter:
    """``__call__(batch) -> columns`` (see the module docstring)."""

    def __init__(self, *, generator_checkpoint: str, generator_ema: bool = True, l2h_checkpoint: str | None = None,
                 l2h_ema: bool = False, projection: Mapping[str, Any] | None = None,
                 spaces: Sequence[str] = ("w",), statistics_samples: int = 10000, statistics_seed: int = 0,
                 device: str = "cpu", torch_threads: int | None = None) -> None:
        if not spaces or any(space not in SPACES for space in spaces):
            raise ValueError(f"spaces must be a non-empty subset of {SPACES}, got {list(spaces)}")
        if torch_threads:
            torch.set_num_threads(int(torch_threads))
        self.device = torch.device(device)
        self.generator = load_checkpoint_network(generator_checkpoint, "generator", ema=generator_ema,
                                                 device=self.device)
        self.l2h = None if l2h_checkpoint is None else load_checkpoint_network(l2h_checkpoint, "l2h", ema=l2h_ema,
                                                                               device=self.device)
        self.projection = ProjectionSettings(**dict(projection or {}))
        self.spaces = tuple(spaces)
        self.statistics = latent_statistics(self.generator, samples=statistics_samples, seed=statistics_seed)

    def targets(self, images: np.ndarray, step1: np.ndarray) -> torch.Tensor:
        """The projection targets of a batch: LR crops through the L2H where ``step1``, else as given."""
        x = images_to_tensor(np.asarray(images), device=self.device)
        if np.any(step1):
            if self.l2h is None:
                raise ValueError("rows marked step1 need an l2h_checkpoint")
            if not np.all(step1):
                raise ValueError("a batch holds step-1 rows or target rows, not both")
            with torch.no_grad():
                x = self.l2h(x)
        return x

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        ids = [str(i) for i in batch["id"]]
        seeds = [int(s) for s in batch["seed"]]
        target = self.targets(batch["image"], np.asarray(batch["step1"], dtype=bool))
        out: dict[str, Any] = {"id": np.array(ids, dtype=object), "set": np.array([str(s) for s in batch["set"]],
                                                                                  dtype=object),
                               "seed": np.array(seeds, dtype=np.int64), "target_size": np.full(len(ids),
                                                                                              target.shape[-1])}
        for space in self.spaces:
            result = self.projection.run(self.generator, target, space=space, seeds=seeds,
                                         statistics=self.statistics)
            out[space] = result.latent.flatten(1).float().cpu().numpy()
            out[f"error_{space}"] = result.error.double().cpu().numpy()
            out[f"steps_{space}"] = result.steps.numpy().astype(np.int64)
        return out
