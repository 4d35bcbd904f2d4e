"""Training stages of SelFSR (``METHODS.md`` section 2), on the generic training stage
(:mod:`pipelines.stages.train`).

``selfsr_degradation`` (inputs ``hr``, ``real_lr``)
    Stage 1: the flow-field degradation network against genuine LR (paper, real world: 180k
    iterations, Adam 2e-4 decaying linearly to 0 over the last half; HR 64, LR 16).
``selfsr_sr_pseudo_pairs`` (inputs ``hr``, ``degradation``)
    Stage 2 on pseudo pairs: the frozen degrader of the ``degradation`` checkpoint turns each HR
    crop's bicubic LR into its degraded LR (paper, real world: 160k iterations, x2 growing to x4
    at 60k).
``selfsr_sr_paired`` (input ``hr``)
    Stage 2 on bicubic pairs (paper, CelebA x8: 160k iterations, grow at 20k and 80k).
``selfsr_sr_unpaired`` (inputs ``hr``, ``lr``)
    Stage 2 with unpaired LR, the bicubic cycle of Eq. 11 (paper: 280k, grow at 40k and 120k).

This module holds only the parameters (paper values as defaults, each reading of a value the
paper leaves open named in its description) and how they become the objectives' arguments.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from fsr_core.training.selfsr_objective import SelFSRDegradationObjective, SelFSRObjective
from pipelines.stage import StageParams
from pipelines.stages.train import TrainingParams, training_stage

__all__ = [
    "SELFSR_DEGRADATION",
    "SELFSR_SR_PAIRED",
    "SELFSR_SR_PSEUDO_PAIRS",
    "SELFSR_SR_UNPAIRED",
    "DegradationLoss",
    "FlowDegraderParams",
    "LRDiscriminatorParams",
    "ProgressiveDiscriminatorParams",
    "SRLoss",
    "SelFSRDegradationParams",
    "SelFSRPairedParams",
    "SelFSRPseudoPairsParams",
    "SelFSRUnpairedParams",
    "SelfConditionedGeneratorParams",
]

PAPER_WIDTHS = (512, 512, 256, 128)


# ---------------------------------------------------------------------------- networks
class FlowDegraderParams(StageParams):
    """Keyword arguments of :class:`~fsr_core.networks.selfsr.FlowDegradationNetwork` (the paper
    gives no architecture: a residual CNN at the LR size is the reading)."""

    channels: int = Field(64, ge=1)
    num_blocks: int = Field(6, ge=0)
    noise_channels: int = Field(0, ge=0, description="per-pixel noise channels at the input (0: the paper; a "
                                                     "departure that lets the degrader make content-independent noise)")


class LRDiscriminatorParams(StageParams):
    """Keyword arguments of :class:`~fsr_core.networks.selfsr.LRDiscriminator` (reading: a PatchGAN)."""

    channels: int = Field(64, ge=1)
    num_downsamples: int = Field(2, ge=0)
    max_channels: int = Field(256, ge=1)


class SelfConditionedGeneratorParams(StageParams):
    """Keyword arguments of :class:`~fsr_core.networks.selfsr.SelfConditionedGenerator` (its
    ``levels`` follow the growth schedule)."""

    channels: tuple[int, ...] = Field(PAPER_WIDTHS, min_length=2, description="width per level, LR level first "
                                      "(reading: StyleGAN's 512-512-256-128 at 16-32-64-128 px)")
    convs_per_level: int = Field(2, ge=1, description="the balanced depth (reading: 2, StyleGAN's per resolution)")
    condition_hidden: int = Field(128, ge=1, description="condition branch width (reading: SPADE's 128)")
    norm: Literal["batch", "instance"] = Field("batch", description="Eq. 6's statistics: over batch and positions")
    global_residual: bool = Field(False, description="not in the paper: add the bilinear upsampling of the input")


class ProgressiveDiscriminatorParams(StageParams):
    """Keyword arguments of :class:`~fsr_core.networks.selfsr.ProgressiveDiscriminator` (its
    ``levels`` follow the growth schedule, its ``lr_size`` is the stage's)."""

    channels: tuple[int, ...] = Field(PAPER_WIDTHS, min_length=2, description="width per level (reading: the G's)")
    base_downsamples: int = Field(2, ge=0, description="blocks below the LR size (reading: 16 -> 4 px, ProGAN's 4x4)")


class DegradationLoss(StageParams):
    """Eq. 5's weights (the paper's values are lost from the text; these are the reading)."""

    adversarial: float = Field(1.0, ge=0)
    identity: float = Field(10.0, ge=0, description="L1(intermediate, clean LR)")
    smoothness: float = Field(1.0, ge=0, description="total variation of the flow, in LR pixels")


class SRLoss(StageParams):
    """Eq. 10's weights besides R1 (lost from the text; the reading)."""

    adversarial: float = Field(1.0, ge=0, description="hinge")
    reconstruction: float = Field(10.0, ge=0, description="L1 against HR (paired) or the bicubic cycle (unpaired)")


# ---------------------------------------------------------------------------- stage 1
class SelFSRDegradationParams(TrainingParams):
    """Parameters of ``selfsr_degradation``; defaults are the paper's real-world setting."""

    degrader: FlowDegraderParams = Field(default_factory=FlowDegraderParams)
    lr_discriminator: LRDiscriminatorParams = Field(default_factory=LRDiscriminatorParams)
    lr_size: int = Field(16, ge=1, description="genuine LR crops are resized to it (paper: 16)")
    scale: int = Field(4, ge=1, description="HR = lr_size x scale; the clean LR is its bicubic (paper: 64 -> 16)")
    max_steps: int = Field(180_000, ge=1, description="paper: 180k iterations")
    batch_size: int = Field(48, ge=1, description="global batch (paper: 48)")
    splits: dict[str, str | None] = Field(default_factory=lambda: {"hr": "train", "real_lr": "train"})
    loss: DegradationLoss = Field(default_factory=DegradationLoss)
    gan_loss: Literal["vanilla", "hinge", "relativistic_average"] = Field(
        "vanilla", description="Eq. 2 (reading: the vanilla GAN it cites)")
    lr: float = Field(2e-4, gt=0, description="Adam (paper: 2e-4)")
    betas: tuple[float, float] = Field((0.5, 0.999), description="reading: CycleGAN's at 2e-4")
    decay_from: float = Field(0.5, ge=0, le=1, description="linear decay to 0 from this fraction (paper: last half)")
    hflip: bool = Field(True, description="random horizontal flips (the paper's only augmentation)")
    disc_highpass: float = Field(0.0, ge=0, description="not in the paper (0: the LR discriminator sees the "
                                 "images): it sees only x - gaussian(x, sigma LR px), noise and compression")
    identity_lowpass: float = Field(0.0, ge=0, description="not in the paper (0: full-band identity L1): the "
                                    "identity term compares gaussian(x, sigma LR px) of intermediate and clean LR")
    flow_magnitude: float = Field(0.0, ge=0, description="not in the paper (0: off): weight of the flow's mean "
                                  "length in LR px (TV leaves a uniform shift free)")
    flow_lr_scale: float = Field(1.0, ge=0, description="not in the paper (1: off): the flow head's Adam rate is "
                                 "the degrader's times this (0 freezes the flow at zero)")

    @model_validator(mode="after")
    def _check_sizes(self) -> "SelFSRDegradationParams":
        if self.lr_size % 2**self.lr_discriminator.num_downsamples:
            raise ValueError(f"lr_size={self.lr_size} must be divisible by 2**lr_discriminator.num_downsamples")
        return self

    def objective_kwargs(self) -> dict[str, Any]:
        return {
            "degrader": self.degrader.model_dump(mode="json"),
            "lr_discriminator": self.lr_discriminator.model_dump(mode="json"),
            "lr_size": self.lr_size,
            "scale": self.scale,
            "loss": self.loss.model_dump(mode="json"),
            "gan_loss": self.gan_loss,
            "lr": self.lr,
            "betas": list(self.betas),
            "total_steps": self.max_steps,
            "decay_from": self.decay_from,
            "hflip": self.hflip,
            "seed": self.seed,
            "disc_highpass": self.disc_highpass,
            "identity_lowpass": self.identity_lowpass,
            "flow_magnitude": self.flow_magnitude,
            "flow_lr_scale": self.flow_lr_scale,
        }


# ---------------------------------------------------------------------------- stage 2
class SelFSRPairedParams(TrainingParams):
    """Parameters of ``selfsr_sr_paired``; defaults are the paper's paired CelebA x8 setting."""

    generator: SelfConditionedGeneratorParams = Field(default_factory=SelfConditionedGeneratorParams)
    discriminator: ProgressiveDiscriminatorParams = Field(default_factory=ProgressiveDiscriminatorParams)
    lr_size: int = Field(16, ge=1, description="LR side (paper: 16); HR = lr_size x 2**(start_levels + growths)")
    start_levels: int = Field(1, ge=1, description="paper: start at x2")
    grow_at: list[int] = Field(default_factory=lambda: [20_000, 80_000], description="paper (paired): 20k, 80k")
    fade_steps: int = Field(10_000, ge=0, description="new level blended in over these steps (reading: ProGAN's "
                            "fade-in; the paper gives no length; 0: none)")
    max_steps: int = Field(160_000, ge=1, description="paper (paired): 160k")
    batch_size: int = Field(48, ge=1, description="global batch (paper: 48)")
    splits: dict[str, str | None] = Field(default_factory=lambda: {"hr": "train"})
    loss: SRLoss = Field(default_factory=SRLoss)
    r1_gamma: float = Field(10.0, ge=0, description="paper: 10")
    lr: float = Field(0.003, gt=0, description="Adam, constant (paper: 0.003 with equalised learning rates)")
    betas: tuple[float, float] = Field((0.0, 0.99), description="reading: ProGAN/StyleGAN's")
    hflip: bool = Field(True, description="random horizontal flips (the paper's only augmentation)")

    @property
    def mode(self) -> str:
        return "paired"

    @model_validator(mode="after")
    def _check_schedule(self) -> "SelFSRPairedParams":
        if self.grow_at != sorted(set(self.grow_at)) or any(g < 1 for g in self.grow_at):
            raise ValueError(f"grow_at must be increasing steps >= 1, got {self.grow_at}")
        final = self.start_levels + len(self.grow_at)
        for name in ("generator", "discriminator"):
            widths = getattr(self, name).channels
            if len(widths) < final + 1:
                raise ValueError(f"{name}.channels has {len(widths)} widths; the schedule ends at {final} levels, "
                                 f"which needs {final + 1}")
        if self.lr_size % 2**self.discriminator.base_downsamples:
            raise ValueError(f"lr_size={self.lr_size} must be divisible by 2**discriminator.base_downsamples")
        return self

    def objective_kwargs(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "generator": self.generator.model_dump(mode="json"),
            "discriminator": self.discriminator.model_dump(mode="json"),
            "lr_size": self.lr_size,
            "start_levels": self.start_levels,
            "grow_at": list(self.grow_at),
            "fade_steps": self.fade_steps,
            "loss": self.loss.model_dump(mode="json"),
            "r1_gamma": self.r1_gamma,
            "lr": self.lr,
            "betas": list(self.betas),
            "hflip": self.hflip,
            "seed": self.seed,
        }


class SelFSRUnpairedParams(SelFSRPairedParams):
    """Parameters of ``selfsr_sr_unpaired``: the paper's unpaired schedule."""

    grow_at: list[int] = Field(default_factory=lambda: [40_000, 120_000], description="paper (unpaired): 40k, 120k")
    max_steps: int = Field(280_000, ge=1, description="paper (unpaired): 280k")
    splits: dict[str, str | None] = Field(default_factory=lambda: {"hr": "train", "lr": "train"})

    @property
    def mode(self) -> str:
        return "unpaired"


class SelFSRPseudoPairsParams(SelFSRPairedParams):
    """Parameters of ``selfsr_sr_pseudo_pairs``: the paper's real-world schedule (x2 growing to x4
    at 60k of 160k), the degrader's arguments (those of the ``degradation`` checkpoint's network)
    and where it comes from."""

    degrader: FlowDegraderParams = Field(default_factory=FlowDegraderParams)
    grow_at: list[int] = Field(default_factory=lambda: [60_000], description="paper (real world): 60k, final x4")
    init: dict[str, str] = Field(default_factory=lambda: {"degrader": "degradation.degrader"},
                                 description="the frozen degrader comes from the stage-1 checkpoint")

    def objective_kwargs(self) -> dict[str, Any]:
        return {**super().objective_kwargs(), "degrader": self.degrader.model_dump(mode="json")}


SELFSR_DEGRADATION = training_stage(
    "selfsr_degradation", SelFSRDegradationParams, SelFSRDegradationObjective,
    description="SelFSR stage 1: flow-field degradation network (bicubic LR of HR -> genuine-looking LR), Ray Train")
SELFSR_SR_PSEUDO_PAIRS = training_stage(
    "selfsr_sr_pseudo_pairs", SelFSRPseudoPairsParams, SelFSRObjective, checkpoints=("degradation",),
    description="SelFSR stage 2: self-conditioned progressive SR on pseudo pairs from a stage-1 degrader")
SELFSR_SR_PAIRED = training_stage(
    "selfsr_sr_paired", SelFSRPairedParams, SelFSRObjective,
    description="SelFSR stage 2: self-conditioned progressive SR on bicubic pairs of HR crops")
SELFSR_SR_UNPAIRED = training_stage(
    "selfsr_sr_unpaired", SelFSRUnpairedParams, SelFSRObjective,
    description="SelFSR stage 2: self-conditioned progressive SR on unpaired LR and HR (bicubic cycle, Eq. 11)")
