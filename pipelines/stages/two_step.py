"""Training stages of step 1 of two-step extreme FSR (``METHODS.md`` section 1).

``two_step_pretrain`` (inputs ``hr``)
    Supervised pre-training of L2H (+ its discriminator) on bicubic SLR made from the HR shards.
``two_step_joint`` (inputs ``hr``, ``real_lr``, ``init``)
    Unsupervised joint training of H2L, L2H and both discriminators on HR and genuine LR,
    starting from the pre-trained networks of the ``init`` checkpoint (``init_networks``).

Both write two outputs:

``checkpoint``
    the final checkpoint folder (:mod:`fsr_core.training.checkpoint` format: weights, constructor
    JSON, optimizer and train state), what later stages and the model registry read;
``train_run``
    the Ray Train storage of the run (its kept checkpoints, Ray's run state) plus ``fit.json``.

A failed pipeline re-run continues a half-trained stage: the runner gives a re-run with the same
fingerprint (code, parameters, inputs) the same output folders, and the Ray Train run name is
fixed (the stage name), so Ray Train resumes from the newest checkpoint in ``train_run`` (the step
counter continues; an already finished fit returns its final checkpoint without training). A
changed parameter or input changes the fingerprint, hence a fresh folder and a fresh run.
``resume: false`` makes the name unique per attempt (always train from the start). Resuming
needs Ray Train storage, so it does not apply to ``num_workers: 0`` (the loop runs in the stage's
own process and writes nothing to ``train_run`` but ``fit.json``).

Loss curves and sample grids go to the stage's MLflow run from Ray Train rank 0.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from typing import Any, Literal

from pydantic import Field, model_validator

from fsr_core import storage
from pipelines.stage import Stage, StageContext, StageParams

__all__ = [
    "H2LDiscriminatorParams",
    "H2LGeneratorParams",
    "L2HDiscriminatorParams",
    "L2HGeneratorParams",
    "TWO_STEP_JOINT",
    "TWO_STEP_PRETRAIN",
    "TwoStepJointParams",
    "TwoStepPretrainParams",
    "train_two_step",
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
    skip_connections: bool = False
    global_residual: bool = Field(False, description="not in the paper: add the bicubic downsampling of the input")


class H2LDiscriminatorParams(StageParams):
    """Keyword arguments of :class:`~fsr_core.networks.two_step.H2LDiscriminator`."""

    channels: int = Field(64, ge=1)
    num_layers: int = Field(3, ge=1)
    num_downsamples: int = Field(1, ge=0)
    attention_layers: int = Field(2, ge=0)
    max_channels: int = Field(512, ge=1)


class TwoStepPretrainParams(StageParams):
    """Parameters of ``two_step_pretrain``; defaults are the paper's (``METHODS.md`` section 1)."""

    l2h: L2HGeneratorParams = Field(default_factory=L2HGeneratorParams)
    l2h_disc: L2HDiscriminatorParams = Field(default_factory=L2HDiscriminatorParams)
    hr_size: int = Field(128, ge=2, description="HR (MR target) crop size; crops are resized to it")
    lr_size: int = Field(16, ge=1, description="LR size; real LR crops are resized to it")
    max_steps: int = Field(143_000, ge=1, description="paper: ~143k updates (20 epochs)")
    batch_size: int = Field(32, ge=1, description="global batch, split over the workers (paper: 32)")
    lr: float = Field(1e-3, gt=0, description="Adam, constant (paper: 1e-3)")
    betas: tuple[float, float] = (0.9, 0.999)
    pixel_weight: float = Field(1.0, ge=0, description="alpha (paper: 1)")
    gan_weight: float = Field(0.001, ge=0, description="beta (paper: 0.001)")
    gan_loss: Literal["relativistic_average", "vanilla", "hinge"] = "relativistic_average"
    report_every: int = Field(1000, ge=1, description="steps between checkpoints (ray.train.report)")
    log_every: int = Field(50, ge=1, description="steps between MLflow loss points")
    sample_every: int = Field(1000, ge=1, description="steps between MLflow sample grids")
    sample_count: int = Field(8, ge=1, description="columns of the sample grid")
    seed: int = Field(0, ge=0)
    shuffle_buffer: int = Field(
        1024, ge=0, description="rows of each worker's seeded local shuffle buffer (0: read order; not in the paper)")
    deterministic_data: bool = Field(
        True, description="Ray Data keeps the read order, so a re-run with the same seed sees the same batches")
    num_workers: int = Field(1, ge=0, description="Ray Train workers; 0 runs the loop in the stage's process")
    use_gpu: bool = False
    cpus_per_worker: float = Field(0.5, gt=0, description="fractional on small machines, or data reads starve")
    torch_threads: int | None = Field(
        None, ge=1, description="PyTorch threads per worker (None: Ray's default, one per reserved CPU)"
    )
    max_failures: int = Field(2, ge=0, description="worker-group restarts, each from the newest checkpoint")
    num_to_keep: int = Field(2, ge=1, description="checkpoints kept in train_run")
    resume: bool = Field(True, description="a re-run continues the stage's Ray Train run (see module docs)")

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


class TwoStepJointParams(TwoStepPretrainParams):
    """Parameters of ``two_step_joint``: the pretrain ones plus the H2L pair, the initialisation
    and the coupling."""

    h2l: H2LGeneratorParams = Field(default_factory=H2LGeneratorParams)
    h2l_disc: H2LDiscriminatorParams = Field(default_factory=H2LDiscriminatorParams)
    init_networks: list[Literal["l2h", "l2h_disc", "h2l", "h2l_disc"]] = Field(
        default_factory=lambda: ["l2h", "l2h_disc"],
        description="networks taken from the init checkpoint (weights only; the step starts at 0)",
    )
    end_to_end: bool = Field(True, description="the L2H loss's gradient flows into H2L (paper: joint end to end)")

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


# ---------------------------------------------------------------------------- the stage body
def _objective_kwargs(p: TwoStepPretrainParams, mode: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "mode": mode,
        "l2h": p.l2h.model_dump(mode="json"),
        "l2h_disc": p.l2h_disc.model_dump(mode="json"),
        "pixel_weight": p.pixel_weight,
        "gan_weight": p.gan_weight,
        "gan_loss": p.gan_loss,
        "lr": p.lr,
        "betas": list(p.betas),
        "scale": p.hr_size // p.lr_size,
    }
    if isinstance(p, TwoStepJointParams):
        kwargs["h2l"] = {**p.h2l.model_dump(mode="json"), "input_size": p.hr_size}
        kwargs["h2l_disc"] = p.h2l_disc.model_dump(mode="json")
        kwargs["end_to_end"] = p.end_to_end
    return kwargs


def _upload_folder(local_dir: str, uri: str) -> None:
    """Copy a local checkpoint folder to ``uri`` file by file; ``networks.json`` (what marks a
    checkpoint folder) goes last."""
    files = []
    for folder, _, names in os.walk(local_dir):
        for name in names:
            path = os.path.join(folder, name)
            files.append(os.path.relpath(path, local_dir))
    files.sort(key=lambda rel: (rel == "networks.json", rel))
    for rel in files:
        storage.upload_file(os.path.join(local_dir, rel), storage.join(uri, *rel.split(os.sep)))


def train_two_step(
    ctx: StageContext, *, mode: str, hr: str, real_lr: str | None = None, init: str | None = None
) -> dict[str, str]:
    """Shared body of both stages: datasets, ``fit``, publish the checkpoint (``register_model`` registers it)."""
    from fsr_core.data.ray_datasets import read_face_dataset
    from fsr_core.training.trainer import fit

    p: TwoStepPretrainParams = ctx.params  # type: ignore[assignment]
    datasets = {"hr": read_face_dataset(hr, split="train", size=p.hr_size, keep_columns=()).select_columns(["image"])}
    if real_lr is not None:
        datasets["real_lr"] = read_face_dataset(
            real_lr, split="train", size=p.lr_size, keep_columns=()
        ).select_columns(["image"])
    train_config: dict[str, Any] = {
        "objective": "two_step",
        "objective_kwargs": _objective_kwargs(p, mode),
        "max_steps": p.max_steps,
        "batch_size": p.batch_size,
        "report_every": p.report_every,
        "log_every": p.log_every,
        "sample_every": p.sample_every,
        "sample_count": p.sample_count,
        "seed": p.seed,
        "tracking_uri": ctx.tracking_uri,
        "run_id": ctx.run_id,
        "torch_threads": p.torch_threads,
        "shuffle_buffer": p.shuffle_buffer,
    }
    if init is not None:
        train_config["init_checkpoint"] = init
        train_config["init_networks"] = list(getattr(p, "init_networks", ["l2h", "l2h_disc"]))
    run_name = ctx.stage if p.resume else f"{ctx.stage}-{uuid.uuid4().hex[:8]}"
    result = fit(
        train_config=train_config,
        datasets=datasets,
        storage_path=ctx.outputs["train_run"],
        run_name=run_name,
        num_workers=p.num_workers,
        use_gpu=p.use_gpu,
        cpus_per_worker=p.cpus_per_worker,
        max_failures=p.max_failures,
        num_to_keep=p.num_to_keep,
        deterministic_data=p.deterministic_data,
    )
    _upload_folder(result.checkpoint_dir, ctx.outputs["checkpoint"])
    with open(os.path.join(result.checkpoint_dir, "train_state.json")) as fh:
        final_state = json.load(fh)
    summary = {
        "ray_run_name": run_name,
        "ray_run_path": result.run_path,
        "final_step": final_state["step"],
        "final_epoch": final_state.get("epoch", 0),
        "metrics": result.metrics,
    }
    storage.write_bytes(storage.join(ctx.outputs["train_run"], "fit.json"), json.dumps(summary, indent=2).encode())
    ctx.set_tags({"fsr_ray_train_run": result.run_path or "local-mode", "fsr_final_step": final_state["step"]})
    if result.temporary:
        shutil.rmtree(result.checkpoint_dir, ignore_errors=True)
    return {"checkpoint": ctx.outputs["checkpoint"], "train_run": ctx.outputs["train_run"]}


def two_step_pretrain(ctx: StageContext, hr: str) -> dict[str, str]:
    return train_two_step(ctx, mode="supervised", hr=hr)


def two_step_joint(ctx: StageContext, hr: str, real_lr: str, init: str) -> dict[str, str]:
    return train_two_step(ctx, mode="unsupervised", hr=hr, real_lr=real_lr, init=init)


TWO_STEP_PRETRAIN = Stage(
    name="two_step_pretrain",
    fn=two_step_pretrain,
    params=TwoStepPretrainParams,
    inputs=("hr",),
    outputs=("checkpoint", "train_run"),
    description="Two-step FSR step 1: pre-train L2H (16->128) on bicubic SLR of HR face shards (Ray Train)",
)

TWO_STEP_JOINT = Stage(
    name="two_step_joint",
    fn=two_step_joint,
    params=TwoStepJointParams,
    inputs=("hr", "real_lr", "init"),
    outputs=("checkpoint", "train_run"),
    description="Two-step FSR step 1: joint H2L + L2H CycleGAN on HR and genuine LR, from a pre-trained checkpoint",
)
