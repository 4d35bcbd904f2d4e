"""Stage ``two_step_latent``: step 2 of two-step extreme FSR (``METHODS.md`` section 1; paper section 5)
fitted on a StyleGAN2 prior, and the PULSE baseline on the same prior, as restorers to register.

Inputs: ``generator`` (a ``stylegan2_prior`` checkpoint: its ``generator``, EMA weights by default),
``l2h`` (a ``two_step_pretrain`` / ``two_step_joint`` checkpoint: step 1), ``lr`` (LR face shards: the
MR-quality set is their step-1 output) and ``hr`` (HR face shards: the HR-quality set, resized to the
generator's size). The stage

1. inverts up to ``max_faces`` faces of each set into W (:mod:`pipelines.inversion_job`: batched Ray
   tasks, ``task_gpus`` may be fractional, resumable per batch) -> output ``codes``;
2. fits the principal normal: a linear SVM on the two sets' W codes in ``normal_space``
   (:func:`~fsr_core.inversion.latent.fit_principal_normal`); logs its training accuracy and each set's
   mean signed distance ``n^T z``;
3. writes output ``checkpoint``: a checkpoint folder with the networks ``l2h``, ``generator`` and
   ``prior`` (:class:`~fsr_core.networks.latent_prior.LatentPrior`: the latent statistics and the
   normal) that exports two latent-search restorers (``restorers.json``), which ``register_model``
   registers like any other: ``two_step`` (search ``two_step_latent``: LR -> L2H -> MR -> W and W+
   projections -> normal edit -> interpolation toward the mean -> error-weighted merge -> HR at the
   generator's size) and ``pulse`` (search ``pulse`` on the LR). Both take ``lr_size`` crops; their
   scale is ``generator size / lr_size``.

Every reading of the paper is a named field (``two_step``: the edit, interpolation and merge settings,
the paper's Eq. 7-11; ``inversion`` / ``two_step.projection``: the projections). The paper's
projection (LPIPS, ~1000 Adam steps at 0.1) is the default; LPIPS needs ``lpips_backbone`` (AlexNet's
ImageNet weights, not obtainable here), so the demo names ``perceptual: none`` (MSE only) or ``dlib``.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Literal

import numpy as np
from pydantic import Field

from fsr_core import storage
from pipelines.stage import Stage, StageContext, StageParams

__all__ = ["PROJECTION_DEFAULTS", "PulseParams", "ProjectionParams", "TWO_STEP_LATENT", "TwoStepLatentParams",
           "TwoStepSearchParams", "exported_restorers", "fit_normal", "two_step_latent"]


class ProjectionParams(StageParams):
    """Keywords of :func:`~fsr_core.inversion.projection.project` (rosinality's projector's defaults)."""

    steps: int = Field(1000, ge=1, description="Adam steps (rosinality: 1000; the paper: ~90 s per face)")
    learning_rate: float = Field(0.1, gt=0)
    perceptual: Literal["lpips", "dlib", "face_embedder", "none"] = Field(
        "lpips", description="the perceptual distance (paper: LPIPS); 'none': MSE only")
    perceptual_weight: float = Field(1.0, ge=0)
    mse: float = Field(1.0, ge=0, description="MSE weight (the paper: 'optionally + MSE')")
    noise_regularize: float = Field(1e5, ge=0, description="StyleGAN2's noise regulariser weight")
    optimise_noise: bool = True
    noise_strength: float = Field(0.05, ge=0, description="latent noise, as a fraction of the codes' spread")
    noise_ramp: float = Field(0.75, ge=0)
    lr_rampup: float = Field(0.05, ge=0)
    lr_rampdown: float = Field(0.25, ge=0)
    downsample: Literal["area", "bicubic"] = Field("area", description="generator output -> target size")
    patience: int | None = Field(None, ge=1, description="per-face early stop (None: off)")
    tolerance: float = Field(1e-3, ge=0)
    lpips_backbone: str | None = Field(None, description="AlexNet ImageNet weights for LPIPS (path or s3://)")
    lpips_heads: str | None = None
    dlib_weights: str | None = None
    template: str = "ffhq"


PROJECTION_DEFAULTS = ProjectionParams()


class TwoStepSearchParams(StageParams):
    """Settings of the ``two_step_latent`` search (:func:`~fsr_core.inversion.two_step.latent_step`)."""

    projection: ProjectionParams = Field(default_factory=ProjectionParams)
    gamma_normal: float = Field(1.0, description="Eq. 7 reading: z' = z + gamma n, gamma > 0 toward HR")
    gamma_w: float = Field(0.1, ge=0, le=1, description="Eq. 9: W code toward the mean (value not in the paper)")
    gamma_w_plus: float = Field(0.3, ge=0, le=1, description="Eq. 9: W+ code toward the mean (not in the paper)")
    interpolation_space: Literal["gaussian", "w"] = Field("gaussian", description="reading: the Gaussianised space")
    merge_rule: Literal["error_ratio", "fixed"] = Field("error_ratio", description="reading: a = E_p+ / (E_p + E_p+)")
    merge_fixed: float = Field(0.5, ge=0, le=1)
    merge_space: Literal["gaussian", "w"] = Field("w", description="where Eq. 10 combines the codes")
    final_noise: Literal["weighted", "w", "w_plus"] = Field("weighted", description="noise maps of the output "
                                                            "(the paper says nothing): merged like the codes")

    def settings(self) -> dict[str, Any]:
        return {**self.projection.model_dump(mode="json"), **self.model_dump(mode="json", exclude={"projection"})}


class PulseParams(StageParams):
    """Settings of the ``pulse`` search (:func:`~fsr_core.inversion.pulse.pulse`)."""

    hypotheses: int = Field(4, ge=1, description="random starts per face; the best by LR error is kept")
    steps: int = Field(100, ge=1, description="PULSE: 100")
    learning_rate: float = Field(0.4, gt=0, description="PULSE: 0.4")
    lr_rampup: float = Field(0.0, ge=0)
    lr_rampdown: float = Field(0.5, ge=0)
    geocross_weight: float = Field(0.1, ge=0, description="PULSE: 0.1")
    eps: float = Field(2e-3, ge=0, description="stop a hypothesis below this LR loss (PULSE's eps)")
    patience: int | None = Field(None, ge=1)
    tolerance: float = Field(1e-3, ge=0)
    noise: Literal["random", "stored"] = "random"
    downsample_method: Literal["area", "bicubic"] = Field("bicubic", description="as the LR-consistency metric")


class TwoStepLatentParams(StageParams):
    lr_size: int = Field(16, ge=1, description="LR crop size the restorers take (step 1's input)")
    mr_split: str | None = Field("train", description="split of the lr input for the MR-quality set")
    hr_split: str | None = Field("train", description="split of the hr input for the HR-quality set")
    max_faces: int = Field(64, ge=2, description="faces per set for the principal normal")
    generator_ema: bool = Field(True, description="the prior's EMA generator (what StyleGAN2 samples with)")
    l2h_ema: bool = Field(False, description="the L2H's EMA weights (the demo's joint stage keeps them)")
    inversion: ProjectionParams = Field(default_factory=ProjectionParams,
                                        description="projection of both sets for the normal")
    normal_space: Literal["gaussian", "w"] = Field("gaussian", description="codes the SVM separates (reading)")
    svm_c: float = Field(1.0, gt=0, description="LinearSVC's C")
    two_step: TwoStepSearchParams = Field(default_factory=TwoStepSearchParams)
    pulse: PulseParams = Field(default_factory=PulseParams)
    statistics_samples: int = Field(10000, ge=2, description="codes sampled for the latent statistics")
    statistics_seed: int = 0
    batch_size: int = Field(32, ge=1, description="faces per inversion task (one optimisation loop)")
    seed: int = Field(0, ge=0)
    task_cpus: float = Field(1.0, gt=0)
    task_gpus: float = Field(0.0, ge=0, description="GPUs per inversion task; fractional to share one")
    torch_threads: int | None = Field(None, ge=1)


def _faces(uri: str, *, split: str | None, size: int, limit: int) -> tuple[list[str], np.ndarray]:
    from fsr_core.data.codec import decode_png
    from fsr_core.data.shards import read_faces
    from fsr_core.degradation.resize import imresize

    table = read_faces(uri, columns=["id", "image_png"], split=split)
    ids = table.column("id").to_pylist()[:limit]
    images = []
    for data in table.column("image_png").to_pylist()[:limit]:
        image = decode_png(data)
        images.append(image if image.shape[0] == size else imresize(image, output_size=(size, size)))
    if len(images) < 2:
        raise ValueError(f"{uri} (split {split}) has {len(images)} face(s); the principal normal needs 2 or more")
    return ids, np.stack(images)


def fit_normal(codes, *, space: str, c: float, seed: int) -> tuple[np.ndarray, dict[str, float]]:
    """The principal normal of an inversion's codes (sets ``mr`` and ``hr``, W codes) in ``space``, and
    what to log about it: training accuracy at the midpoint of the sets' mean distances, the means,
    each set's mean projection error and size."""
    import torch

    from fsr_core.inversion.latent import fit_principal_normal, gaussianise

    sets = np.asarray(codes.column("set").to_pylist())
    w = torch.tensor(np.asarray(codes.column("w").to_pylist(), np.float32))
    z = gaussianise(w) if space == "gaussian" else w
    normal = fit_principal_normal(z[sets == "mr"], z[sets == "hr"], c=c, seed=seed)
    distance = z.double().numpy() @ normal
    threshold = 0.5 * (distance[sets == "mr"].mean() + distance[sets == "hr"].mean())
    errors = np.asarray(codes.column("error_w").to_pylist())
    return normal, {
        "normal_accuracy": float(((distance > threshold) == (sets == "hr")).mean()),
        "distance_mr": float(distance[sets == "mr"].mean()), "distance_hr": float(distance[sets == "hr"].mean()),
        "projection_error_mr": float(errors[sets == "mr"].mean()),
        "projection_error_hr": float(errors[sets == "hr"].mean()),
        "faces_mr": int((sets == "mr").sum()), "faces_hr": int((sets == "hr").sum()),
    }


def exported_restorers(p: TwoStepLatentParams, generator_size: int) -> dict[str, dict[str, Any]]:
    """``restorers.json`` of the stage's checkpoint: ``two_step`` and ``pulse``."""
    scale = generator_size // p.lr_size
    statistics = {"statistics_samples": p.statistics_samples, "statistics_seed": p.statistics_seed}
    return {
        "two_step": {"kind": "latent_search", "networks": ["l2h", "generator", "prior"], "input_size": p.lr_size,
                     "scale": scale, "search": "two_step_latent", "settings": p.two_step.settings()},
        "pulse": {"kind": "latent_search", "networks": ["generator", "prior"], "input_size": p.lr_size,
                  "scale": scale, "search": "pulse", "settings": {**p.pulse.model_dump(mode="json"), **statistics}},
    }


def _write_checkpoint(out: str, **checkpoint: Any) -> None:
    """:func:`~fsr_core.training.checkpoint.save_checkpoint` to a local folder or an ``s3://`` prefix."""
    from fsr_core.training.checkpoint import save_checkpoint

    if not storage.is_s3(out):
        save_checkpoint(out, **checkpoint)
        return
    folder = save_checkpoint(tempfile.mkdtemp(prefix="fsr-two-step-latent-"), **checkpoint)
    files = sorted(os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
                   for root, _, names in os.walk(folder) for name in names)
    for rel in sorted(files, key=lambda rel: rel == "networks.json"):  # networks.json last: the folder is complete
        storage.upload_file(os.path.join(folder, rel), storage.join(out, rel))


def two_step_latent(ctx: StageContext, generator: str, l2h: str, lr: str, hr: str) -> dict[str, str]:
    import torch

    from fsr_core.inversion.batch import load_checkpoint_network
    from fsr_core.inversion.latent import latent_statistics
    from fsr_core.networks.latent_prior import LatentPrior
    from pipelines.inversion_job import invert_faces, read_codes

    p: TwoStepLatentParams = ctx.params  # type: ignore[assignment]
    gen = load_checkpoint_network(generator, "generator", ema=p.generator_ema)
    step1 = load_checkpoint_network(l2h, "l2h", ema=p.l2h_ema)
    mr_size = p.lr_size * step1.scale
    if gen.size % p.lr_size or mr_size > gen.size:
        raise ValueError(f"the generator's {gen.size} px must be a multiple of lr_size {p.lr_size} and at least the "
                         f"L2H's {mr_size} px output")
    mr_ids, mr_images = _faces(lr, split=p.mr_split, size=p.lr_size, limit=p.max_faces)
    hr_ids, hr_images = _faces(hr, split=p.hr_split, size=gen.size, limit=p.max_faces)

    inverter = {"generator_checkpoint": generator, "generator_ema": p.generator_ema, "l2h_checkpoint": l2h,
                "l2h_ema": p.l2h_ema, "projection": p.inversion.model_dump(mode="json"), "spaces": ["w"],
                "statistics_samples": p.statistics_samples, "statistics_seed": p.statistics_seed,
                "torch_threads": p.torch_threads}
    summary = invert_faces(
        ctx.outputs["codes"], {"mr": mr_images, "hr": hr_images}, {"mr": mr_ids, "hr": hr_ids}, inverter=inverter,
        step1={"mr": True}, batch_size=p.batch_size, seed=p.seed, num_cpus=p.task_cpus, num_gpus=p.task_gpus,
        report=lambda done, total, faces: ctx.report(done, total, unit="batches", faces=faces))
    normal, metrics = fit_normal(read_codes(ctx.outputs["codes"]), space=p.normal_space, c=p.svm_c, seed=p.seed)
    metrics["inversion_batches_reused"] = summary["batches_reused"]
    ctx.log_metrics(metrics)
    ctx.set_tags({"fsr_perceptual": p.two_step.projection.perceptual, "fsr_inversion_perceptual": p.inversion.perceptual})

    prior = LatentPrior(style_dim=gen.style_dim, normal_space=p.normal_space).set(
        statistics=latent_statistics(gen, samples=p.statistics_samples, seed=p.statistics_seed),
        normal=torch.from_numpy(normal))
    state = {"step": 0, "objective": "two_step_latent", "generator_checkpoint": generator, "l2h_checkpoint": l2h,
             "mr_size": mr_size, "normal": metrics}
    _write_checkpoint(ctx.outputs["checkpoint"], networks={"l2h": step1, "generator": gen, "prior": prior},
                      train_state=state, restorers=exported_restorers(p, gen.size))
    return {"checkpoint": ctx.outputs["checkpoint"], "codes": ctx.outputs["codes"]}


TWO_STEP_LATENT = Stage(
    name="two_step_latent",
    fn=two_step_latent,
    params=TwoStepLatentParams,
    inputs=("generator", "l2h", "lr", "hr"),
    outputs=("checkpoint", "codes"),
    description="Step 2 of two-step extreme FSR on a StyleGAN2 prior: MR- and HR-quality faces inverted in batched "
                "Ray tasks (codes as shards), the principal normal by a linear SVM, and a checkpoint exporting the "
                "restorers two_step (LR -> L2H -> latent interpolation -> HR) and pulse",
    held_cpus=lambda params: params.task_cpus,
)
