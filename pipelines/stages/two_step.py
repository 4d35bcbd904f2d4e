"""Training stages of step 1 of two-step extreme FSR (``METHODS.md`` section 1), on the generic
training stage (:mod:`pipelines.stages.train`).

``two_step_pretrain`` (input ``hr``)
    Supervised pre-training of L2H (+ its discriminator) on bicubic SLR made from the HR shards.
``two_step_joint`` (inputs ``hr``, ``real_lr``, ``init``)
    Unsupervised joint training of H2L, L2H and both discriminators on HR and genuine LR,
    starting from the pre-trained networks of the ``init`` checkpoint (``init``: by default
    ``l2h`` and ``l2h_disc`` from ``init``).

This module holds only the parameters (paper values as defaults) and how they become the
objective's arguments; outputs, resume, MLflow logging and data splits are the generic stage's.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from fsr_core.training.two_step_objective import TwoStepObjective
from pipelines.stage import StageParams
from pipelines.stages.train import TrainingParams, training_stage

__all__ = [
    "H2LDiscriminatorParams",
    "H2LGeneratorParams",
    "L2HDiscriminatorParams",
    "L2HGeneratorParams",
    "TWO_STEP_JOINT",
    "TWO_STEP_PRETRAIN",
    "LossWeights",
    "TwoStepJointParams",
    "TwoStepPretrainParams",
]


# ---------------------------------------------------------------------------- parameters
class L2HGeneratorParams(StageParams):
    """Keyword arguments of :class:`~fsr_core.networks.two_step.L2HGenerator`."""

    channels: int = Field(64, ge=1)
    blocks_per_section: tuple[int, ...] = Field((6, 3, 2, 1), min_length=1, description="paper: 6, 3, 2, 1")
    reduction: int = Field(16, ge=1)
    attention_after_section: tuple[int, ...] = (1,)
    global_residual: bool = Field(False, description="not in the paper: add the bicubic upsampling of the input")


class L2HDiscriminatorParams(StageParams):
    """Keyword arguments of :class:`~fsr_core.networks.two_step.L2HDiscriminator`."""

    channels: int = Field(64, ge=1)
    num_layers: int = Field(4, ge=1)
    num_downsamples: int = Field(4, ge=0)
    attention_layers: int = Field(2, ge=0)
    max_channels: int = Field(512, ge=1)


class H2LGeneratorParams(StageParams):
    """Keyword arguments of :class:`~fsr_core.networks.two_step.H2LGenerator` (``input_size`` is
    the stage's ``hr_size``)."""

    channels: int = Field(64, ge=1)
    noise_dim: int = Field(64, ge=1)
    encoder_blocks: int = Field(5, ge=0)
    decoder_blocks: int = Field(4, ge=0)
    decoder_upsample_blocks: int = Field(2, ge=0)
    reduction: int = Field(16, ge=1)
    skip_connections: bool = Field(False, description="not in the paper: U-Net skips around the bottleneck")
    global_residual: bool = Field(False, description="not in the paper: add the bicubic downsampling of the input")
    pixel_noise: bool = Field(False, description="not in the paper: per-pixel noise injection at the output size")


class H2LDiscriminatorParams(StageParams):
    """Keyword arguments of :class:`~fsr_core.networks.two_step.H2LDiscriminator`."""

    channels: int = Field(64, ge=1)
    num_layers: int = Field(3, ge=1)
    num_downsamples: int = Field(1, ge=0)
    attention_layers: int = Field(2, ge=0)
    max_channels: int = Field(512, ge=1)


class LossWeights(StageParams):
    """``L = pixel * L_pixel + gan * L_GAN`` of one generator (Eq. 1-3; paper: 1 and 0.001)."""

    pixel: float = Field(1.0, ge=0, description="alpha (paper: 1)")
    gan: float = Field(0.001, ge=0, description="beta (paper: 0.001)")


class TwoStepPretrainParams(TrainingParams):
    """Parameters of ``two_step_pretrain``; defaults are the paper's (``METHODS.md`` section 1)."""

    l2h: L2HGeneratorParams = Field(default_factory=L2HGeneratorParams)
    l2h_disc: L2HDiscriminatorParams = Field(default_factory=L2HDiscriminatorParams)
    hr_size: int = Field(128, ge=2, description="HR (MR target) crop size; crops are resized to it")
    lr_size: int = Field(16, ge=1, description="LR size; real LR crops are resized to it")
    max_steps: int = Field(143_000, ge=1, description="paper: ~143k updates (20 epochs)")
    batch_size: int = Field(32, ge=1, description="global batch, split over the workers (paper: 32)")
    splits: dict[str, str | None] = Field(default_factory=lambda: {"hr": "train"},
                                          description="split read from each data input (null: all rows)")
    lr: float = Field(1e-3, gt=0, description="Adam, constant (paper: 1e-3)")
    betas: tuple[float, float] = (0.9, 0.999)
    l2h_loss: LossWeights = Field(default_factory=LossWeights, description="the L2H generator's alpha and beta")
    gan_loss: Literal["relativistic_average", "vanilla", "hinge"] = "relativistic_average"
    l2h_ema: float = Field(0.0, ge=0, lt=1, description="not in the paper (0: none): decay of an exponential moving "
                           "average of the L2H weights, saved as weights/l2h.ema.pt (register it with ema: true)")

    @model_validator(mode="after")
    def _check_sizes(self) -> "TwoStepPretrainParams":
        scale = 2 ** (len(self.l2h.blocks_per_section) - 1)
        if self.hr_size != self.lr_size * scale:
            raise ValueError(
                f"hr_size={self.hr_size} must be lr_size={self.lr_size} x {scale} "
                f"(the L2H generator's factor for {len(self.l2h.blocks_per_section)} sections)"
            )
        if self.hr_size % 2**self.l2h_disc.num_downsamples:
            raise ValueError(f"hr_size={self.hr_size} must be divisible by 2**l2h_disc.num_downsamples")
        return self

    def objective_kwargs(self) -> dict[str, Any]:
        return {
            "mode": "supervised",
            "l2h": self.l2h.model_dump(mode="json"),
            "l2h_disc": self.l2h_disc.model_dump(mode="json"),
            "hr_size": self.hr_size,
            "l2h_loss": self.l2h_loss.model_dump(mode="json"),
            "gan_loss": self.gan_loss,
            "lr": self.lr,
            "betas": list(self.betas),
            "scale": self.hr_size // self.lr_size,
            "l2h_ema": self.l2h_ema,
        }


class TwoStepJointParams(TwoStepPretrainParams):
    """Parameters of ``two_step_joint``: the pretrain ones plus the H2L pair, its loss weights, the
    initialisation and the coupling."""

    h2l: H2LGeneratorParams = Field(default_factory=H2LGeneratorParams)
    h2l_disc: H2LDiscriminatorParams = Field(default_factory=H2LDiscriminatorParams)
    h2l_loss: LossWeights = Field(default_factory=LossWeights, description="the H2L generator's alpha and beta")
    splits: dict[str, str | None] = Field(default_factory=lambda: {"hr": "train", "real_lr": "train"},
                                          description="split read from each data input (null: all rows)")
    init: dict[str, str] = Field(
        default_factory=lambda: {"l2h": "init.l2h", "l2h_disc": "init.l2h_disc"},
        description="networks taken from the init checkpoint (weights only; the step starts at 0)",
    )
    end_to_end: bool = Field(True, description="the L2H loss's gradient flows into H2L (paper: joint end to end)")
    h2l_pixel_lowpass: float = Field(0.0, ge=0, description="not in the paper (0: full-band L2): the H2L pixel term "
                                     "compares Gaussian low-passed images, sigma in LR pixels")
    h2l_disc_highpass: float = Field(0.0, ge=0, description="not in the paper (0: the H2L discriminator sees the "
                                     "images): it sees only their high band x - gaussian_sigma(x), sigma in LR pixels")
    h2l_lr: float | None = Field(None, gt=0, description="not in the paper (null: lr): the Adam learning rate of the "
                                 "H2L generator and its discriminator")

    @model_validator(mode="after")
    def _check_h2l_sizes(self) -> "TwoStepJointParams":
        h2l = self.h2l
        if self.hr_size % 2**h2l.encoder_blocks or (
            self.hr_size // 2**h2l.encoder_blocks * 2**h2l.decoder_upsample_blocks != self.lr_size
        ):
            raise ValueError(
                f"the H2L generator maps hr_size={self.hr_size} to {self.hr_size} / 2**{h2l.encoder_blocks} "
                f"* 2**{h2l.decoder_upsample_blocks}, which must be lr_size={self.lr_size}"
            )
        if self.lr_size % 2**self.h2l_disc.num_downsamples:
            raise ValueError(f"lr_size={self.lr_size} must be divisible by 2**h2l_disc.num_downsamples")
        return self

    def objective_kwargs(self) -> dict[str, Any]:
        return {
            **super().objective_kwargs(),
            "mode": "unsupervised",
            "h2l": {**self.h2l.model_dump(mode="json"), "input_size": self.hr_size},
            "h2l_disc": self.h2l_disc.model_dump(mode="json"),
            "h2l_loss": self.h2l_loss.model_dump(mode="json"),
            "end_to_end": self.end_to_end,
            "h2l_pixel_lowpass": self.h2l_pixel_lowpass,
            "h2l_disc_highpass": self.h2l_disc_highpass,
            "h2l_lr": self.h2l_lr,
        }


TWO_STEP_PRETRAIN = training_stage(
    "two_step_pretrain", TwoStepPretrainParams, TwoStepObjective,
    description="Two-step FSR step 1: pre-train L2H (16->128) on bicubic SLR of HR face shards (Ray Train)")
TWO_STEP_JOINT = training_stage(
    "two_step_joint", TwoStepJointParams, TwoStepObjective, checkpoints=("init",),
    description="Two-step FSR step 1: joint H2L + L2H CycleGAN on HR and genuine LR, from a pre-trained checkpoint")
