"""The training stage of a StyleGAN2 prior (``METHODS.md`` section 1, step 2: the generator the
two-step method inverts), on the generic training stage (:mod:`pipelines.stages.train`).

``stylegan2_prior`` (input ``hr``)
    A StyleGAN2 generator and discriminator on the HR crops resized to ``size`` (32-128 px for a
    prior trained here), with Ray Train workers, resume, MLflow loss curves and sample grids
    (:class:`~fsr_core.training.stylegan2_objective.StyleGAN2Objective`). Its checkpoint folder
    also holds ``stylegan2.pt`` in rosinality's layout (``g``, ``d``, ``g_ema``, ``latent_avg``,
    ``g_optim``, ``d_optim``), what
    :func:`~fsr_core.networks.stylegan2.load_stylegan2_checkpoint` reads (given the folder).

The defaults are StyleGAN2's (config F networks, Adam 0.002 with betas (0, 0.99), lazy R1 every
16 steps, path length every 4, mixing 0.9, EMA half-life 10k images); readings are named in the
field descriptions. This module holds only the parameters and how they become the objective's
arguments.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from fsr_core.training.stylegan2_objective import StyleGAN2Objective
from pipelines.stage import StageParams
from pipelines.stages.train import TrainingParams, training_stage

__all__ = ["STYLEGAN2_PRIOR", "StyleGAN2DiscriminatorParams", "StyleGAN2GeneratorParams", "StyleGAN2PriorParams"]


class StyleGAN2GeneratorParams(StageParams):
    """Keyword arguments of :class:`~fsr_core.networks.stylegan2.Generator` besides ``size``."""

    style_dim: int = Field(512, ge=1, description="Z and W width (StyleGAN2: 512)")
    n_mlp: int = Field(8, ge=1, description="mapping layers (StyleGAN2: 8)")
    channel_multiplier: int = Field(2, ge=1, description="config F: 2")
    channels: tuple[int, ...] | None = Field(
        None, description="widths at 4, 8, ..., size px (None: rosinality's table for the channel_multiplier)")
    lr_mlp: float = Field(0.01, gt=0, description="the mapping network's learning-rate multiplier (StyleGAN2: 0.01)")


class StyleGAN2DiscriminatorParams(StageParams):
    """Keyword arguments of :class:`~fsr_core.networks.stylegan2.Discriminator` besides ``size``."""

    channel_multiplier: int = Field(2, ge=1)
    channels: tuple[int, ...] | None = Field(None, description="widths at 4, 8, ..., size px (None: the table)")


class StyleGAN2PriorParams(TrainingParams):
    """Parameters of ``stylegan2_prior``; StyleGAN2's values as defaults."""

    size: int = Field(64, ge=4, description="the prior's resolution; HR crops are resized to it (32-128 here)")
    generator: StyleGAN2GeneratorParams = Field(default_factory=StyleGAN2GeneratorParams)
    discriminator: StyleGAN2DiscriminatorParams = Field(default_factory=StyleGAN2DiscriminatorParams)
    max_steps: int = Field(100_000, ge=1, description="reading: 3.2M images at batch 32 for a 32-128 px prior")
    batch_size: int = Field(32, ge=1, description="global batch; per worker divisible by 4 or below 4 "
                            "(the discriminator's minibatch-stddev groups)")
    splits: dict[str, str | None] = Field(default_factory=lambda: {"hr": "train"})
    lr: float = Field(0.002, gt=0, description="Adam (StyleGAN2: 0.002), before the lazy-regularisation correction")
    betas: tuple[float, float] = Field((0.0, 0.99), description="StyleGAN2's, before the correction")
    r1_gamma: float | None = Field(None, ge=0, description="R1 gamma; None: StyleGAN2-ADA's 0.0002 * size^2 / batch")
    d_reg_every: int = Field(16, ge=1, description="lazy R1 interval (StyleGAN2: 16)")
    path_regularize: float | None = Field(
        None, ge=0, description="path-length weight (StyleGAN2: 2); None: 2 with use_gpu, 0 (off) on CPUs, where "
                                "its double backward through the generator is costly")
    g_reg_every: int = Field(4, ge=1, description="lazy path-length interval (StyleGAN2: 4)")
    path_batch_shrink: int = Field(2, ge=1, description="path-length batch = batch / this (StyleGAN2: 2)")
    mixing: float = Field(0.9, ge=0, le=1, description="style-mixing probability (StyleGAN2: 0.9)")
    ema_kimg: float = Field(10.0, gt=0, description="EMA half-life in thousands of images (StyleGAN2: 10)")
    ema_rampup: float | None = Field(None, gt=0, description="StyleGAN2-ADA's EMA ramp-up (0.05), None: off")
    hflip: bool = Field(True, description="random horizontal flips of the crops")

    @model_validator(mode="after")
    def _check_size(self) -> "StyleGAN2PriorParams":
        if self.size & (self.size - 1):
            raise ValueError(f"size must be a power of two, got {self.size}")
        widths = self.size.bit_length() - 2  # 4, 8, ..., size
        for name in ("generator", "discriminator"):
            channels = getattr(self, name).channels
            if channels is not None and (len(channels) != widths or min(channels) < 1):
                raise ValueError(f"{name}.channels must give {widths} positive widths (4 ... {self.size} px), "
                                 f"got {list(channels)}")
        return self

    def objective_kwargs(self) -> dict[str, Any]:
        path = self.path_regularize
        if path is None:
            path = 2.0 if self.use_gpu else 0.0
        return {
            "size": self.size,
            "generator": self.generator.model_dump(mode="json"),
            "discriminator": self.discriminator.model_dump(mode="json"),
            "batch_size": self.batch_size,
            "lr": self.lr,
            "betas": list(self.betas),
            "r1_gamma": self.r1_gamma,
            "d_reg_every": self.d_reg_every,
            "path_regularize": path,
            "g_reg_every": self.g_reg_every,
            "path_batch_shrink": self.path_batch_shrink,
            "mixing": self.mixing,
            "ema_kimg": self.ema_kimg,
            "ema_rampup": self.ema_rampup,
            "hflip": self.hflip,
            "seed": self.seed,
        }


STYLEGAN2_PRIOR = training_stage(
    "stylegan2_prior", StyleGAN2PriorParams, StyleGAN2Objective,
    description="StyleGAN2 prior on HR crops (non-saturating loss, lazy R1, optional path length, EMA), Ray Train; "
                "checkpoint also in rosinality's layout (stylegan2.pt)")
