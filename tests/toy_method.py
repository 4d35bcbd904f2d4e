"""A test-only method on the method shape, loaded as a plugin (``FSR_PLUGINS=tests.toy_method``).

It has what the real methods to come need from the shape: a network that grows level by level
(growth state in the checkpoint, DDP re-wrapped after growing, earlier levels keep their weights),
an EMA copy, its own RNG state, a data set read with its identity labels, initialisation from two
checkpoints, and two restorers: feed-forward and a tiny latent search (LR back-projection through
the generator), the seam that StyleGAN inversion, PULSE and SAIR fill.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from fsr_core.networks.base import Network
from fsr_core.training.objective import DataSpec, Objective, RestorerSpec
from pipelines.stages.train import TrainingParams, training_stage


class ToyGrower(Network):
    """LR ``[N,3,s,s]`` in [-1,1] -> ``[N,3,s*2**levels,...]``: a head conv, one x2 level per
    ``levels`` (bilinear upsampling + conv), a shared 1x1 to-RGB added to the bilinear upsampling."""

    def __init__(self, *, channels: int = 8, levels: int = 1) -> None:
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        self.scale = 2**levels
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.levels = nn.ModuleList(
            nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                          nn.Conv2d(channels, channels, 3, padding=1), nn.LeakyReLU(0.2))
            for _ in range(levels)
        )
        self.to_rgb = nn.Conv2d(channels, 3, 1)

    def forward(self, lr: Tensor) -> Tensor:
        if lr.ndim != 4 or lr.shape[1] != 3:
            raise ValueError(f"ToyGrower expects [N,3,H,W], got {tuple(lr.shape)}")
        features = self.head(lr)
        for level in self.levels:
            features = level(features)
        base = F.interpolate(lr, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return (base + self.to_rgb(features)).clamp(-1.0, 1.0)


class ToyIdentityNet(Network):
    """Face ``[N,3,S,S]`` -> identity logits ``[N,num_identities]`` (trained on identity labels)."""

    def __init__(self, *, channels: int = 8, num_identities: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, channels, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
                                      nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.LeakyReLU(0.2))
        self.logits = nn.Linear(channels, num_identities)

    def forward(self, images: Tensor) -> Tensor:
        return self.logits(self.features(images).mean(dim=(2, 3)))


def grown(network: ToyGrower) -> ToyGrower:
    """``network`` with one more level; every earlier weight kept, the new level fresh."""
    bigger = ToyGrower(**{**network.config, "levels": network.config["levels"] + 1})
    missing, unexpected = bigger.load_state_dict(network.state_dict(), strict=False)
    new_level = f"levels.{network.config['levels']}."
    if unexpected or not all(key.startswith(new_level) for key in missing):
        raise RuntimeError(f"growth changed more than the new level: missing {missing}, unexpected {unexpected}")
    return bigger.to(next(network.parameters()).device)


class ToyGrowingObjective(Objective):
    """Pixel L1 of the growing generator against HR area-downsampled to its output size, and
    identity cross-entropy of the identity network on HR. Grows the generator at ``grow_at`` steps
    (up to ``max_levels``); keeps an EMA of it; draws input noise from its own RNG."""

    def __init__(self, *, hr_size: int = 32, lr_size: int = 4, channels: int = 8, start_levels: int = 1,
                 max_levels: int = 3, grow_at: Sequence[int] = (), lr: float = 1e-3, ema_beta: float = 0.9,
                 noise: float = 0.01, seed: int = 0, step_sleep: float = 0.0, device: Any = "cpu",
                 data_info: Mapping[str, Any] | None = None) -> None:
        super().__init__(device=device, data_info=data_info)
        self.hr_size, self.lr_size, self.max_levels = hr_size, lr_size, max_levels
        self.grow_at, self.lr, self.ema_beta = tuple(grow_at), lr, ema_beta
        self.noise_std, self.step_sleep = noise, step_sleep
        num_identities = int(self.data_info.get("hr", {}).get("num_identities", 1))
        self.networks = {"generator": ToyGrower(channels=channels, levels=start_levels).to(self.device),
                         "identity": ToyIdentityNet(channels=channels, num_identities=num_identities).to(self.device)}
        self.set_trained(("generator", "identity"))
        self.optimizers = {name: torch.optim.Adam(net.parameters(), lr=lr) for name, net in self.networks.items()}
        self.make_ema("generator")
        self.rng = torch.Generator().manual_seed(seed)
        self.grows = 0

    @classmethod
    def datasets(cls, config: Mapping[str, Any]) -> dict[str, DataSpec]:
        return {"hr": DataSpec(size=int(config.get("hr_size", 32)), columns=("image", "identity"))}

    @property
    def level(self) -> int:
        return self.networks["generator"].config["levels"]

    def _grow(self) -> None:
        self.replace_network("generator", grown(self.networks["generator"]))
        self.ema["generator"] = grown(self.ema["generator"]).eval().requires_grad_(False)
        new = f"levels.{self.level - 1}."
        with torch.no_grad():  # the new level of the EMA starts from the generator's fresh weights
            for (key, p_ema), p in zip(self.ema["generator"].named_parameters(),
                                       self.networks["generator"].parameters()):
                if key.startswith(new):
                    p_ema.copy_(p)
        self.optimizers["generator"] = torch.optim.Adam(self.networks["generator"].parameters(), lr=self.lr)
        self.grows += 1

    def on_step(self, step: int) -> bool:
        if step in self.grow_at and self.level < self.max_levels:
            self._grow()
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"level": self.level, "grows": self.grows, "rng": self.rng.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        while self.level < int(state["level"]):
            self._grow()
        self.grows = int(state["grows"])
        self.rng.set_state(state["rng"])

    def train_step(self, batch, *, step: int) -> dict[str, float]:
        hr = batch["hr"]["image"].to(self.device)
        identity = batch["hr"]["identity"].to(self.device)
        target = F.interpolate(hr, size=self.lr_size * 2**self.level, mode="area")
        lr = F.interpolate(hr, size=self.lr_size, mode="area")
        lr = lr + self.noise_std * torch.randn(lr.shape, generator=self.rng).to(self.device)
        pixel = (self.module("generator")(lr) - target).abs().mean()
        known = identity >= 0
        id_loss = F.cross_entropy(self.module("identity")(hr[known]), identity[known])
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        (pixel + id_loss).backward()
        for opt in self.optimizers.values():
            opt.step()
        self.update_ema("generator", beta=self.ema_beta)
        if self.step_sleep:
            time.sleep(self.step_sleep)
        return {"pixel": float(pixel.detach()), "identity": float(id_loss.detach()), "level": float(self.level)}

    @torch.no_grad()
    def sample(self, batch, *, seed: int = 0) -> dict[str, Tensor]:
        hr = batch["hr"]["image"].to(self.device)
        lr = F.interpolate(hr, size=self.lr_size, mode="area")
        return {"lr": lr, "sr": self.ema["generator"](lr),
                "hr": F.interpolate(hr, size=self.lr_size * 2**self.level, mode="area")}

    def exports(self) -> dict[str, RestorerSpec]:
        scale = 2**self.level
        return {
            "sr": RestorerSpec(kind="feed_forward", networks=("generator",), input_size=self.lr_size, scale=scale),
            "search": RestorerSpec(kind="latent_search", networks=("generator",), input_size=self.lr_size,
                                   scale=scale, search="toy_back_projection",
                                   settings={"steps": 3, "learning_rate": 0.05}),
        }


def toy_back_projection(networks: Mapping[str, nn.Module], lr: Tensor, *, seed: int, steps: int = 3,
                        learning_rate: float = 0.05) -> Tensor:
    """A tiny latent search: the LR input ``z`` (from ``lr``) optimised so that the generator's
    output, area-downsampled, matches ``lr``; the faces of a batch share the loop (losses summed)."""
    generator = networks["generator"]
    z = lr.detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([z], lr=learning_rate)
    for _ in range(steps):
        down = F.interpolate(generator(z), size=lr.shape[-2:], mode="area")
        loss = ((down - lr) ** 2).flatten(1).sum(dim=1).sum()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        return generator(z)


class ToyParams(TrainingParams):
    hr_size: int = 32
    lr_size: int = 4
    channels: int = 8
    start_levels: int = 1
    max_levels: int = 3
    grow_at: list[int] = Field(default_factory=list)
    lr: float = 1e-3
    ema_beta: float = 0.9
    step_sleep: float = 0.0
    max_steps: int = 4
    batch_size: int = 4
    report_every: int = 1
    log_every: int = 1
    sample_every: int = 2
    sample_count: int = 2

    def objective_kwargs(self) -> dict[str, Any]:
        return {"hr_size": self.hr_size, "lr_size": self.lr_size, "channels": self.channels,
                "start_levels": self.start_levels, "max_levels": self.max_levels, "grow_at": list(self.grow_at),
                "lr": self.lr, "ema_beta": self.ema_beta, "seed": self.seed, "step_sleep": self.step_sleep}


TOY_TRAIN = training_stage("toy_train", ToyParams, ToyGrowingObjective, description="test: the growing toy method")
TOY_TRAIN_FROM = training_stage("toy_train_from", ToyParams, ToyGrowingObjective, checkpoints=("gen_init", "id_init"),
                                description="test: the growing toy method, initialised from two checkpoints")

NETWORKS = {"toy_grower": ToyGrower, "toy_identity": ToyIdentityNet}
SEARCHES = {"toy_back_projection": toy_back_projection}
STAGES = {stage.name: stage for stage in (TOY_TRAIN, TOY_TRAIN_FROM)}
