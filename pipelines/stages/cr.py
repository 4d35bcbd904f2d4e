"""Training stages of Characteristic Regularisation, CR (``METHODS.md`` section 3), on the generic
training stage (:mod:`pipelines.stages.train`).

Stage 1, the paper's pre-training "in parallel" (no stage reads another's output, so the runner
runs them concurrently), with ``face_embedder_train`` as phi_fr (CentreFace on the auxiliary HR):

``cr_sr_pretrain`` (input ``hr``)
    phi_sr on auxiliary pairs (MSE, Eq. 1; paper: 100 epochs). Exports restorer ``sr``.
``cr_regulariser`` (inputs ``hr``, ``real_lr``)
    phi_cr and D: genuine LR -> artificial-looking LR (Eq. 3-4 and 6 with the inverse read as the
    identity; paper: 130 epochs).
``cr_inverse`` (inputs ``hr``, ``real_lr``)
    phi~_cr and D~: artificial LR -> pseudo-genuine LR (Eq. 5; learned independently).

Stage 2:

``cr_joint`` (inputs ``hr``, ``real_lr`` and the checkpoints ``sr``, ``regulariser``, ``inverse``, ``embedder``)
    phi_cr + phi_sr fine-tuned jointly (Eq. 9; paper: 10 epochs) with D and D' (Eq. 8) on the
    project's face embedder; the inverse and the embedder frozen. Exports ``cr_sr`` (genuine LR)
    and ``sr`` (artificial LR), as the paper deploys.
``cr_joint_dlib`` (the same without ``embedder``)
    phi_fr is dlib's face descriptor read from ``dlib_weights``.

The paper's values are the defaults (lr 1e-4, batch 16, LR 16 -> 64, lambda 0.2, lambda_cr 0.06,
lambda_cr-sr 0.01, lambda_cr-gan 0.03, the block counts); its epochs are steps at batch 16 over
CelebA's 202,599 crops. Every reading of what it leaves open is named in a field description; the
objective module (:mod:`fsr_core.training.cr_objective`) has the whole list.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, model_validator

from fsr_core.training.cr_objective import CRDomainObjective, CRJointObjective, CRSuperResolutionObjective
from pipelines.stage import StageParams
from pipelines.stages.face_embedder import FaceEmbedderNetworkParams
from pipelines.stages.train import TrainingParams, training_stage

__all__ = [
    "CR_INVERSE",
    "CR_JOINT",
    "CR_JOINT_DLIB",
    "CR_REGULARISER",
    "CR_SR_PRETRAIN",
    "CRInverseParams",
    "CRJointDlibParams",
    "CRJointParams",
    "CRRegulariserParams",
    "CRSRPretrainParams",
    "paper_steps",
]

CELEBA_ROWS = 202_599


def paper_steps(epochs: int, *, rows: int = CELEBA_ROWS, batch_size: int = 16) -> int:
    """Steps of ``epochs`` passes over ``rows`` crops at ``batch_size`` (the last batch counted)."""
    return math.ceil(epochs * rows / batch_size)


# ---------------------------------------------------------------------------- networks
class SuperResolverParams(StageParams):
    """Keyword arguments of :class:`~fsr_core.networks.cr.CRSuperResolver` (phi_sr)."""

    channels: int = Field(64, ge=1, description="reading: SRGAN's 64")
    blocks_per_group: tuple[int, ...] = Field((12, 3, 2), min_length=1, description="paper: 12 / 3 / 2, x2 between")
    global_residual: bool = Field(False, description="not in the paper: add the bilinear upsampling of the input")


class RegulariserParams(StageParams):
    """Keyword arguments of :class:`~fsr_core.networks.cr.CharacteristicRegulariser` (phi_cr, phi~_cr)."""

    channels: int = Field(64, ge=1, description="reading: 64")
    num_blocks: int = Field(3, ge=0, description="paper: 3 residual blocks")


class LRDiscriminatorParams(StageParams):
    """Keyword arguments of :class:`~fsr_core.networks.cr.LRDomainDiscriminator` (D, D~; its
    ``input_size`` is the stage's ``lr_size``)."""

    channels: int = Field(64, ge=1)
    num_blocks: int = Field(6, ge=1, description="paper: 6 residual blocks + a fully connected layer")
    num_downsamples: int = Field(3, ge=0, description="reading: the last 3 blocks halve the size (16 -> 2 px)")
    max_channels: int = Field(256, ge=1)


class FeatureDiscriminatorParams(StageParams):
    """Keyword arguments of :class:`~fsr_core.networks.cr.FeatureDiscriminator` (D'; its
    ``feature_dim`` is phi_fr's embedding length)."""

    hidden: int = Field(256, ge=1, description="reading: 256 (the paper gives no widths)")
    num_layers: int = Field(5, ge=1, description="paper: 5 fully connected layers")


class DomainLoss(StageParams):
    """The stage-1 LR translator's generator weights."""

    pixel: float = Field(..., ge=0, description="||net(target) - target||^2 on crops of the domain it maps to")
    gan: float = Field(..., ge=0, description="the adversarial term")


class JointLoss(StageParams):
    """Eq. 9's weights and Eq. 6's lambda (the paper's values)."""

    sr: float = Field(1.0, ge=0, description="L_sr (paper: 1)")
    cr: float = Field(0.06, ge=0, description="lambda_cr (paper: 0.06)")
    cr_sr: float = Field(0.01, ge=0, description="lambda_cr-sr, the LR consistency of Eq. 7 (paper: 0.01)")
    cr_gan: float = Field(0.03, ge=0, description="lambda_cr-gan, the semantic adaptation of Eq. 8 (paper: 0.03)")
    cr_cycle_gan: float = Field(0.2, ge=0, description="lambda inside L_cr, Eq. 6 (paper: 0.2)")


# ---------------------------------------------------------------------------- shared
class _CRParams(TrainingParams):
    lr_size: int = Field(16, ge=1, description="LR side; genuine LR crops are resized to it (paper: 16)")
    scale: int = Field(4, ge=1, description="HR = lr_size x scale (paper: 16 -> 64)")
    batch_size: int = Field(16, ge=1, description="global batch (paper: 16)")
    lr: float = Field(1e-4, gt=0, description="Adam, constant (paper: 1e-4)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="reading: TensorFlow's Adam defaults")
    downsampler: Literal["bicubic", "area"] = Field(
        "bicubic", description="f_DS, which makes the artificial LR and Eq. 7's down-sampling (reading: MATLAB bicubic)")

    def _common(self) -> dict[str, Any]:
        return {"lr_size": self.lr_size, "scale": self.scale, "downsampler": self.downsampler, "lr": self.lr,
                "betas": list(self.betas)}


def _check_sr_scale(params: Any) -> None:
    factor = 2 ** (len(params.sr.blocks_per_group) - 1)
    if factor != params.scale:
        raise ValueError(f"scale={params.scale} but sr.blocks_per_group has {len(params.sr.blocks_per_group)} "
                         f"groups (x{factor})")


def _check_disc(params: Any) -> None:
    d = params.discriminator
    if d.num_downsamples > d.num_blocks or params.lr_size % 2**d.num_downsamples:
        raise ValueError(f"discriminator.num_downsamples={d.num_downsamples} must be <= num_blocks and divide "
                         f"lr_size={params.lr_size} by a power of two")


# ---------------------------------------------------------------------------- stage 1
class CRSRPretrainParams(_CRParams):
    """Parameters of ``cr_sr_pretrain``; defaults are the paper's."""

    sr: SuperResolverParams = Field(default_factory=SuperResolverParams)
    max_steps: int = Field(paper_steps(100), ge=1, description="paper: 100 epochs of CelebA at batch 16")
    splits: dict[str, str | None] = Field(default_factory=lambda: {"hr": "train"})

    @model_validator(mode="after")
    def _check(self) -> "CRSRPretrainParams":
        _check_sr_scale(self)
        return self

    def objective_kwargs(self) -> dict[str, Any]:
        return {"sr": self.sr.model_dump(mode="json"), **self._common()}


class CRRegulariserParams(_CRParams):
    """Parameters of ``cr_regulariser``; defaults are the paper's."""

    regulariser: RegulariserParams = Field(default_factory=RegulariserParams)
    discriminator: LRDiscriminatorParams = Field(default_factory=LRDiscriminatorParams)
    max_steps: int = Field(paper_steps(130), ge=1, description="paper: 130 epochs of CelebA at batch 16")
    splits: dict[str, str | None] = Field(default_factory=lambda: {"hr": "train", "real_lr": "train"})
    loss: DomainLoss = Field(
        default_factory=lambda: DomainLoss(pixel=1.0, gan=0.2),
        description="Eq. 6 with the inverse read as the identity (the inverse trains concurrently): "
                    "||artificial - cr(artificial)||^2 + lambda 0.2 L_gan")
    gan_loss: Literal["vanilla", "hinge", "relativistic_average"] = Field(
        "vanilla", description="Eq. 3 (reading: the vanilla GAN it cites)")
    loss_reduction: Literal["mean", "sum"] = Field(
        "mean", description="reading of the paper's ||.||^2: mean squared error per term (mean) or the squared "
                            "norm summed over each image's elements (sum: L2 terms outweigh the GAN terms by "
                            "their element counts); docs/cr-study.md measures both")

    @property
    def direction(self) -> str:
        return "regulariser"

    @model_validator(mode="after")
    def _check(self) -> "CRRegulariserParams":
        _check_disc(self)
        return self

    def objective_kwargs(self) -> dict[str, Any]:
        return {"direction": self.direction, "regulariser": self.regulariser.model_dump(mode="json"),
                "discriminator": self.discriminator.model_dump(mode="json"), "loss": self.loss.model_dump(mode="json"),
                "gan_loss": self.gan_loss, "loss_reduction": self.loss_reduction, **self._common()}


class CRInverseParams(CRRegulariserParams):
    """Parameters of ``cr_inverse``: phi~_cr, Eq. 5 (its adversarial term alone by default)."""

    loss: DomainLoss = Field(
        default_factory=lambda: DomainLoss(pixel=0.0, gan=1.0),
        description="Eq. 5 alone (pixel 0); pixel > 0 adds ||inverse(genuine) - genuine||^2 (not in the paper)")

    @property
    def direction(self) -> str:
        return "inverse"


# ---------------------------------------------------------------------------- stage 2
class CRJointParams(_CRParams):
    """Parameters of ``cr_joint``; defaults are the paper's. The network arguments must be those of
    the stage-1 checkpoints they are initialised from (``init``)."""

    sr: SuperResolverParams = Field(default_factory=SuperResolverParams)
    regulariser: RegulariserParams = Field(default_factory=RegulariserParams)
    discriminator: LRDiscriminatorParams = Field(default_factory=LRDiscriminatorParams)
    feature_discriminator: FeatureDiscriminatorParams = Field(default_factory=FeatureDiscriminatorParams)
    embedder: FaceEmbedderNetworkParams = Field(default_factory=FaceEmbedderNetworkParams,
                                                description="phi_fr: the face_embedder_train checkpoint's arguments")
    max_steps: int = Field(paper_steps(10), ge=1, description="paper: 10 epochs of CelebA at batch 16")
    splits: dict[str, str | None] = Field(default_factory=lambda: {"hr": "train", "real_lr": "train"})
    loss: JointLoss = Field(default_factory=JointLoss)
    sr_through_cr: bool = Field(
        True, description="reading of 'end-to-end training for the auxiliary artificial LR branch': L_sr on "
                          "sr(cr(inverse(artificial))), so phi_cr learns from the HR too (false: sr(artificial))")
    gan_loss: Literal["vanilla", "hinge", "relativistic_average"] = Field(
        "vanilla", description="Eq. 3 and 8 (reading: the vanilla GAN they cite)")
    loss_reduction: Literal["mean", "sum"] = Field(
        "mean", description="reading of the paper's ||.||^2: mean squared error per term (mean) or the squared "
                            "norm summed over each image's elements (sum: L2 terms outweigh the GAN terms by "
                            "their element counts); docs/cr-study.md measures both")
    init: dict[str, str] = Field(
        default_factory=lambda: {"sr": "sr.sr", "cr": "regulariser.cr", "cr_disc": "regulariser.cr_disc",
                                 "inverse": "inverse.inverse", "embedder": "embedder.embedder"},
        description="the four stage-1 checkpoints (D continues from stage 1: reading; D' starts afresh)")

    @model_validator(mode="after")
    def _check(self) -> "CRJointParams":
        _check_sr_scale(self)
        _check_disc(self)
        return self

    def _networks(self) -> dict[str, Any]:
        return {"sr": self.sr.model_dump(mode="json"), "regulariser": self.regulariser.model_dump(mode="json"),
                "discriminator": self.discriminator.model_dump(mode="json"),
                "feature_discriminator": self.feature_discriminator.model_dump(mode="json"),
                "loss": self.loss.model_dump(mode="json"), "sr_through_cr": self.sr_through_cr,
                "gan_loss": self.gan_loss, "loss_reduction": self.loss_reduction, **self._common()}

    def objective_kwargs(self) -> dict[str, Any]:
        return {**self._networks(), "face_features": "embedder", "embedder": self.embedder.model_dump(mode="json")}


class CRJointDlibParams(CRJointParams):
    """Parameters of ``cr_joint_dlib``: phi_fr is dlib's face descriptor (not trained on the HR set)."""

    embedder: None = Field(None, description="unused: phi_fr is dlib's descriptor")
    dlib_weights: str | None = Field(
        None, description="dlib_face_recognition_resnet_model_v1.dat (null: the face_recognition_models package's "
                          "copy); a missing file stops the stage naming it")
    init: dict[str, str] = Field(
        default_factory=lambda: {"sr": "sr.sr", "cr": "regulariser.cr", "cr_disc": "regulariser.cr_disc",
                                 "inverse": "inverse.inverse"},
        description="the three stage-1 checkpoints besides phi_fr")

    def objective_kwargs(self) -> dict[str, Any]:
        return {**self._networks(), "face_features": "dlib", "dlib_weights": self.dlib_weights}


CR_SR_PRETRAIN = training_stage(
    "cr_sr_pretrain", CRSRPretrainParams, CRSuperResolutionObjective,
    description="CR stage 1: phi_sr (SRGAN-like, 16->64) on bicubic pairs of auxiliary HR crops, MSE (Ray Train)")
CR_REGULARISER = training_stage(
    "cr_regulariser", CRRegulariserParams, CRDomainObjective,
    description="CR stage 1: phi_cr, genuine LR -> artificial-looking LR, GAN + identity on artificial LR")
CR_INVERSE = training_stage(
    "cr_inverse", CRInverseParams, CRDomainObjective,
    description="CR stage 1: phi~_cr, artificial LR -> pseudo-genuine LR, GAN (Eq. 5)")
CR_JOINT = training_stage(
    "cr_joint", CRJointParams, CRJointObjective, checkpoints=("sr", "regulariser", "inverse", "embedder"),
    description="CR stage 2: phi_cr + phi_sr jointly (Eq. 9) from the four stage-1 checkpoints, D' on the face embedder")
CR_JOINT_DLIB = training_stage(
    "cr_joint_dlib", CRJointDlibParams, CRJointObjective, checkpoints=("sr", "regulariser", "inverse"),
    description="CR stage 2 with dlib's face descriptor as phi_fr (weights from a configured file)")
