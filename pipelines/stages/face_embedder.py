"""The training stage of the project's own face embedder (softmax + centre loss, Wen et al. 2016),
on the generic training stage (:mod:`pipelines.stages.train`).

``face_embedder_train`` (input ``faces``: shards whose rows carry an ``identity``)
    Trains :class:`~fsr_core.networks.face_embedder.FaceEmbedder` and its softmax head on the
    identities of the split it reads (``train`` by default; the synthetic and CelebA splits are by
    identity, so every class is an identity of that split). Output ``checkpoint`` holds
    ``embedder`` (load it with :func:`~fsr_core.training.face_embedder_objective.load_face_embedder`)
    and ``head``; the label map is ``train_state.json``'s ``data_info.faces.identities``.

This module holds only the parameters (the paper's values as defaults) and how they become the
objective's arguments; outputs, resume, MLflow logging and data splits are the generic stage's.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from fsr_core.training.face_embedder_objective import FaceEmbedderObjective
from pipelines.stage import StageParams
from pipelines.stages.train import TrainingParams, training_stage

__all__ = ["FACE_EMBEDDER_TRAIN", "FaceEmbedderNetworkParams", "FaceEmbedderParams"]


class FaceEmbedderNetworkParams(StageParams):
    """Keyword arguments of :class:`~fsr_core.networks.face_embedder.FaceEmbedder` (not the paper's
    network: a small residual CNN with BatchNorm and PReLU)."""

    input_size: int = Field(64, ge=1, description="crops are resized to it; a multiple of 2**len(channels)")
    embedding_dim: int = Field(128, ge=1)
    channels: tuple[int, ...] = Field((32, 64, 128, 256), min_length=1)
    blocks_per_stage: int = Field(1, ge=0)

    @model_validator(mode="after")
    def _check_size(self) -> "FaceEmbedderNetworkParams":
        divisor = 2 ** len(self.channels)
        if self.input_size % divisor:
            raise ValueError(f"input_size={self.input_size} must be a multiple of 2**len(channels)={divisor}")
        return self


class FaceEmbedderParams(TrainingParams):
    """Parameters of ``face_embedder_train``; defaults are the paper's face-recognition setting."""

    embedder: FaceEmbedderNetworkParams = Field(default_factory=FaceEmbedderNetworkParams)
    centre_weight: float = Field(0.003, ge=0, description="lambda, the centre loss weight (paper: 0.003)")
    centre_rate: float = Field(0.5, ge=0, le=1, description="alpha, the centres' update rate (paper: 0.5)")
    lr: float = Field(0.1, gt=0, description="SGD rate at step 0 (paper: 0.1)")
    momentum: float = Field(0.9, ge=0, lt=1, description="paper: 0.9")
    weight_decay: float = Field(5e-4, ge=0, description="paper: 5e-4")
    lr_milestones: tuple[int, ...] = Field((16_000, 24_000), description="steps where the rate is multiplied by "
                                           "lr_decay (paper: 16k, 24k)")
    lr_decay: float = Field(0.1, gt=0, le=1, description="paper: 0.1")
    max_steps: int = Field(28_000, ge=1, description="paper: 28k iterations")
    batch_size: int = Field(256, ge=1, description="global batch, split over the workers (paper: 256)")
    splits: dict[str, str | None] = Field(default_factory=lambda: {"faces": "train"},
                                          description="split read from each data input (null: all rows)")

    @model_validator(mode="after")
    def _check_milestones(self) -> "FaceEmbedderParams":
        if list(self.lr_milestones) != sorted(set(self.lr_milestones)) or any(m < 1 for m in self.lr_milestones):
            raise ValueError(f"lr_milestones must be increasing positive steps, got {list(self.lr_milestones)}")
        return self

    def objective_kwargs(self) -> dict[str, Any]:
        return {
            "embedder": self.embedder.model_dump(mode="json"),
            "centre_weight": self.centre_weight,
            "centre_rate": self.centre_rate,
            "lr": self.lr,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "lr_milestones": list(self.lr_milestones),
            "lr_decay": self.lr_decay,
        }


FACE_EMBEDDER_TRAIN = training_stage(
    "face_embedder_train", FaceEmbedderParams, FaceEmbedderObjective,
    description="Face embedder (softmax + centre loss, Wen et al. 2016) on the identity labels of face shards "
                "(Ray Train); for identity metrics, CR's face features and SAIR's identity term")
