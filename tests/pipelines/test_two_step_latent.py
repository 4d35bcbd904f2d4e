"""Batched Ray inversion tasks (resumable per batch) and the two_step_latent stage: codes as shards, the
principal normal, a checkpoint whose two latent-search restorers export, load and restore."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from fsr_core.networks.two_step import L2HGenerator
from fsr_core.restore.restorer import export_restorer, load_bundle
from fsr_core.training.checkpoint import save_checkpoint
from pipelines.inversion_job import invert_faces, plan_batches, read_codes
from pipelines.stage import StageContext
from pipelines.stages.two_step_latent import TwoStepLatentParams, two_step_latent
from tests.fsr_core.inversion.conftest import tiny_generator
from tests.pipelines.test_cr_stages import write_faces

PROJECTION = {"steps": 4, "learning_rate": 0.1, "perceptual": "none"}


@pytest.fixture()
def checkpoints(tmp_path):
    generator = tiny_generator()
    save_checkpoint(str(tmp_path / "prior"), networks={"generator": generator}, ema={"generator": generator},
                    train_state={"step": 1})
    torch.manual_seed(0)
    l2h = L2HGenerator(channels=4, blocks_per_section=(1, 1), reduction=2, attention_after_section=(),
                       global_residual=True)
    save_checkpoint(str(tmp_path / "step1"), networks={"l2h": l2h}, train_state={"step": 1})
    return str(tmp_path / "prior"), str(tmp_path / "step1")


def test_plan_seeds_follow_the_faces():
    batches = plan_batches({"b": ["x", "y", "z"], "a": ["p"]}, batch_size=2, seed=10)
    assert [(b["set"], b["ids"], b["seeds"]) for b in batches] == [
        ("a", ["p"], [10]), ("b", ["x", "y"], [11, 12]), ("b", ["z"], [13])]


def test_inversion_tasks_resume_per_batch(ray_session, tmp_path, checkpoints):
    prior, step1 = checkpoints
    rng = np.random.default_rng(0)
    images = {"hr": rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8),
              "mr": rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)}
    ids = {"hr": ["h0", "h1", "h2"], "mr": ["m0", "m1"]}
    inverter = {"generator_checkpoint": prior, "l2h_checkpoint": step1, "projection": PROJECTION,
                "spaces": ["w", "w_plus"], "statistics_samples": 200, "torch_threads": 1}
    out = str(tmp_path / "codes")
    common = dict(inverter=inverter, step1={"mr": True}, batch_size=2, num_cpus=0.5)
    first = invert_faces(out, images, ids, **common)
    assert first == {"batches": 3, "batches_run": 3, "batches_reused": 0, "faces": 5}
    table = read_codes(out)
    assert table.column("id").to_pylist() == ["h0", "h1", "h2", "m0", "m1"]
    assert table.column("target_size").to_pylist() == [16, 16, 16, 16, 16]  # MR = the L2H's 8 -> 16
    assert len(table.column("w")[0].as_py()) == 16 and len(table.column("w_plus")[0].as_py()) == 6 * 16
    # a killed job: one part missing; the re-run inverts that batch only, the same codes come back
    kept = {name: os.path.getmtime(os.path.join(out, name)) for name in ("part-00000.parquet", "part-00002.parquet")}
    os.remove(os.path.join(out, "part-00001.parquet"))
    second = invert_faces(out, images, ids, **common)
    assert second["batches_run"] == 1 and second["batches_reused"] == 2 and second["faces"] == 1
    assert {name: os.path.getmtime(os.path.join(out, name)) for name in kept} == kept
    again = read_codes(out)
    assert again.column("id").to_pylist() == table.column("id").to_pylist()
    np.testing.assert_allclose(np.asarray(again.column("w").to_pylist()), np.asarray(table.column("w").to_pylist()),
                               atol=1e-5)
    with pytest.raises(ValueError, match="another"):
        invert_faces(out, images, ids, **{**common, "batch_size": 3})


def test_the_stage_fits_the_normal_and_exports_both_restorers(ray_session, tmp_path, checkpoints):
    prior, step1 = checkpoints
    lr = write_faces(str(tmp_path / "lr"), count=6, size=8, seed=1)
    hr = write_faces(str(tmp_path / "hr"), count=6, size=32, seed=0)
    params = TwoStepLatentParams(
        lr_size=8, max_faces=6, generator_ema=True, inversion=PROJECTION, statistics_samples=200, batch_size=4,
        task_cpus=0.5, torch_threads=1, two_step={"projection": PROJECTION, "gamma_normal": 0.5},
        pulse={"hypotheses": 2, "steps": 3})
    outputs = {"checkpoint": str(tmp_path / "out" / "checkpoint"), "codes": str(tmp_path / "out" / "codes")}
    ctx = StageContext(pipeline="t", stage="step2", params=params, outputs=outputs, work_dir=str(tmp_path / "out"))
    result = two_step_latent(ctx, generator=prior, l2h=step1, lr=lr, hr=hr)
    assert result == outputs
    assert read_codes(outputs["codes"]).num_rows == 12
    faces = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    for name in ("two_step", "pulse"):
        card = export_restorer(outputs["checkpoint"], name, str(tmp_path / name))
        assert card.kind == "latent_search" and card.input_size == 8 and card.scale == 2
        restorer = load_bundle(str(tmp_path / name))
        normal = restorer.networks["prior"].normal
        assert abs(float(normal.norm()) - 1) < 1e-5
        assert restorer.restore(faces, batch_size=2).shape == (2, 16, 16, 3)


def test_fit_normal_on_codes_of_two_separated_sets():
    import pyarrow as pa

    from pipelines.stages.two_step_latent import fit_normal

    rng = np.random.default_rng(0)
    direction = np.zeros(8)
    direction[3] = 1.0
    mr = rng.normal(size=(20, 8)) - 1.5 * direction
    hr = rng.normal(size=(20, 8)) + 1.5 * direction
    table = pa.table({"set": ["mr"] * 20 + ["hr"] * 20, "w": [list(map(float, row)) for row in np.concatenate([mr, hr])],
                      "error_w": [0.1] * 20 + [0.2] * 20})
    normal, metrics = fit_normal(table, space="w", c=1.0, seed=0)
    assert normal @ direction > 0.8 and metrics["normal_accuracy"] > 0.9
    assert metrics["distance_hr"] > metrics["distance_mr"]
    assert metrics["faces_mr"] == metrics["faces_hr"] == 20 and abs(metrics["projection_error_hr"] - 0.2) < 1e-9
