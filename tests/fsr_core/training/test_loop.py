"""The Ray Train loop and ``fit``: reports and checkpoints, resuming, one distributed fit on S3
that survives an injected worker failure. Real Ray, MLflow (SQLite) and moto S3; tiny networks."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from fsr_core import storage
from fsr_core.data.codec import encode_png
from fsr_core.data.shards import ShardWriter
from fsr_core.training.loop import (LoopConfig, autocast, resolve_precision, sample_grid, to_channels_last,
                                    to_float_images)
from fsr_core.training.objective import DataSpec
from fsr_core.training.trainer import fit
from fsr_core.training.two_step_objective import TwoStepObjective

TINY = {
    "l2h": {"channels": 8, "blocks_per_section": [1, 1, 1, 1], "reduction": 4},
    "l2h_disc": {"channels": 8, "max_channels": 16},
    "h2l": {"channels": 8, "noise_dim": 8, "reduction": 4},
    "h2l_disc": {"channels": 8, "max_channels": 16},
}


def write_faces(folder: str, *, count: int, size: int, seed: int) -> str:
    """``count`` smooth random colour-ramp crops of ``size`` px as one train-split shard."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, size)
    with ShardWriter(folder) as writer:
        for index in range(count):
            base, dx, dy = rng.uniform(0.1, 0.6, (3, 3))
            image = base + dx * ramp[None, :, None] * 0.6 + dy * ramp[:, None, None] * 0.6
            image = (np.clip(image, 0, 1) * 255).astype(np.uint8)
            writer.write({
                "id": f"t{seed}-{index}", "image_png": encode_png(image), "height": size, "width": size,
                "source": "test", "source_uri": f"mem://{seed}/{index}", "split": "train",
            })
    return folder


@pytest.fixture(scope="module")
def face_shards(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("faces")
    return {
        "hr": write_faces(str(root / "hr"), count=16, size=128, seed=0),
        "real_lr": write_faces(str(root / "lr"), count=16, size=16, seed=1),
    }


@pytest.fixture()
def datasets(ray_session, face_shards):
    from fsr_core.data.ray_datasets import read_face_dataset

    sizes = {"hr": 128, "real_lr": 16}
    return {
        name: read_face_dataset(face_shards[name], split="train", size=size, keep_columns=()).select_columns(["image"])
        for name, size in sizes.items()
    }


@pytest.fixture()
def mlflow_run(tracking_uri, tmp_path) -> tuple[str, str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.create_experiment("loop", artifact_location=str(tmp_path / "artifacts"))
    return tracking_uri, client.create_run(experiment, run_name="loop-test").info.run_id


def loop_config(mode: str, **overrides) -> dict:
    kwargs = dict(TINY) if mode == "unsupervised" else {"l2h": TINY["l2h"], "l2h_disc": TINY["l2h_disc"]}
    return {
        "objective": TwoStepObjective,
        "objective_kwargs": {"mode": mode, **kwargs},
        "batch_size": 4,
        "report_every": 2,
        "log_every": 1,
        "sample_every": 2,
        "sample_count": 3,
        **overrides,
    }


def read_state(folder: str) -> dict:
    with open(os.path.join(folder, "train_state.json")) as fh:
        return json.load(fh)


# ---------------------------------------------------------------------------- helpers, no Ray
def test_to_float_images_and_sample_grid():
    images = torch.tensor([0, 255], dtype=torch.uint8).repeat_interleave(16 * 16 * 3 // 2).view(1, 16, 16, 3)
    floats = to_float_images(images)
    assert floats.shape == (1, 3, 16, 16) and floats.min() == -1 and floats.max() == 1
    with pytest.raises(ValueError, match="uint8"):
        to_float_images(images.float())
    lr = torch.rand(2, 3, 16, 16) * 2 - 1
    grid = sample_grid({"lr": lr, "hr": torch.zeros(2, 3, 128, 128)})
    assert grid.shape == (256, 256, 3) and grid.dtype == np.uint8
    block = grid[:8, :8]  # one LR pixel, nearest-upsampled x8
    assert (block == block[0, 0]).all()
    assert (grid[128:] == 128).all()  # the zero image in the second row (0 -> 127.5 -> 128)


def test_loop_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="repot_every"):
        LoopConfig.from_dict({**loop_config("supervised", max_steps=2), "repot_every": 3})
    with pytest.raises(ValueError, match="objective"):
        LoopConfig.from_dict({**loop_config("supervised", max_steps=2), "objective": "two_step"})
    with pytest.raises(ValueError, match="init"):
        LoopConfig.from_dict({**loop_config("supervised", max_steps=2), "init": {"l2h": {"checkpoint": "x"}}})
    with pytest.raises(ValueError, match="precision.*'fp16'"):
        LoopConfig.from_dict({**loop_config("supervised", max_steps=2), "precision": "fp16"})


def test_auto_precision_is_bf16_only_where_the_device_computes_it_natively():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
    assert resolve_precision("auto", torch.device("meta")) == "fp32"
    LoopConfig.from_dict({**loop_config("supervised", max_steps=2), "precision": "auto"})  # accepted


def test_channels_last_keeps_the_optimised_parameters_and_bf16_autocast_keeps_fp32_weights():
    torch.manual_seed(0)
    objective = TwoStepObjective(mode="unsupervised", l2h_ema=0.9, **TINY)
    optimised = {id(p) for opt in objective.optimizers.values() for group in opt.param_groups for p in group["params"]}
    to_channels_last(objective)
    networks = list(objective.networks.values()) + list(objective.ema.values())
    kernels = [p for net in networks for p in net.parameters() if p.ndim == 4 and p.shape[1] > 1 and p.shape[2] > 1]
    assert kernels and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in kernels)
    assert {id(p) for name in objective.trained for p in objective.networks[name].parameters()} <= optimised
    images = to_float_images(torch.randint(0, 256, (4, 128, 128, 3), dtype=torch.uint8))
    lr = to_float_images(torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8))
    with autocast(torch.device("cpu"), "fp32"):
        assert torch.nn.functional.conv2d(lr, torch.ones(1, 3, 1, 1)).dtype == torch.float32
    with autocast(torch.device("cpu"), "bf16"):
        assert torch.nn.functional.conv2d(lr, torch.ones(1, 3, 1, 1)).dtype == torch.bfloat16
        before = {k: v.clone() for k, v in objective.networks["l2h"].state_dict().items()}
        losses = objective.train_step({"hr": {"image": images}, "real_lr": {"image": lr}}, step=0)
    assert losses and all(np.isfinite(v) for v in losses.values())
    after = objective.networks["l2h"].state_dict()
    assert all(v.dtype == torch.float32 for v in after.values())  # autocast computes in bf16, weights stay fp32
    assert any(not torch.equal(before[k], after[k]) for k in before)  # ...and the step updated them
    assert all(v.dtype == torch.float32 for v in objective.ema["l2h"].state_dict().values())


# ---------------------------------------------------------------------------- driver mode (num_workers=0)
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_driver_run_reports_checkpoints_every_n_steps(datasets, mlflow_run, tmp_path, monkeypatch):
    import ray.train
    from mlflow.tracking import MlflowClient

    reports = []
    real_report = ray.train.report

    def spy(metrics, checkpoint=None, **kwargs):
        folder = checkpoint.path
        reports.append({
            "metrics": dict(metrics),
            "state": read_state(folder),
            "files": sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs),
            "folder": folder,
        })
        return real_report(metrics, checkpoint=checkpoint, **kwargs)

    monkeypatch.setattr(ray.train, "report", spy)
    tracking_uri, run_id = mlflow_run
    result = fit(
        train_config=loop_config("supervised", max_steps=5, tracking_uri=tracking_uri, run_id=run_id),
        datasets={"hr": datasets["hr"]}, storage_path=str(tmp_path / "ray"), run_name="driver",
        num_workers=0, use_gpu=False, max_failures=0, num_to_keep=2,
    )
    assert [r["state"]["step"] for r in reports] == [2, 4, 5]  # every 2 steps and at the end
    assert [r["metrics"]["step"] for r in reports] == [2, 4, 5]
    assert reports[-1]["files"] == [
        "networks.json", "optimizers.pt", "restorers.json", "train_state.json", "weights/l2h.pt", "weights/l2h_disc.pt"
    ]
    state = reports[-1]["state"]
    assert state["objective"] == "fsr_core.training.two_step_objective:TwoStepObjective"
    assert state["objective_config"]["mode"] == "supervised" and state["mlflow_run_id"] == run_id
    assert reports[1]["state"]["epoch"] == 0 and reports[2]["state"]["epoch"] == 1  # 16 rows / 4 = 4 steps an epoch
    assert all(math_ok(r["metrics"]["l2h_total"]) for r in reports)
    # the result is the last checkpoint, kept locally; earlier temporary folders are gone
    assert result.temporary and read_state(result.checkpoint_dir)["step"] == 5
    assert result.metrics["step"] == 5
    assert not any(os.path.exists(r["folder"]) for r in reports[:-1])
    # MLflow: a loss point per step, sample grids every 2 steps and at the end
    client = MlflowClient(tracking_uri=tracking_uri)
    assert [m.step for m in client.get_metric_history(run_id, "l2h_pixel")] == [1, 2, 3, 4, 5]
    samples = sorted(a.path for a in client.list_artifacts(run_id, "samples"))
    assert samples == ["samples/step_00000002.png", "samples/step_00000004.png", "samples/step_00000005.png"]
    shutil.rmtree(result.checkpoint_dir)


def math_ok(value: float) -> bool:
    return np.isfinite(value) and value > 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_driver_run_resume_continues_the_step_counter(datasets, tmp_path):
    common = dict(storage_path=str(tmp_path / "ray"), num_workers=0, use_gpu=False, max_failures=0, num_to_keep=2)
    hr_only = {"hr": datasets["hr"]}
    first = fit(train_config=loop_config("supervised", max_steps=4), datasets=hr_only, run_name="a", **common)
    saved = shutil.copytree(first.checkpoint_dir, tmp_path / "step4")
    assert read_state(saved)["step"] == 4
    second = fit(
        train_config=loop_config("supervised", max_steps=6, resume_checkpoint=str(saved)),
        datasets=hr_only, run_name="b", **common,
    )
    state = read_state(second.checkpoint_dir)
    assert (state["step"], state["attempt_start_step"], state["restored_from"]) == (6, 4, "resume_checkpoint")
    assert state["epoch"] == 1  # 4 steps an epoch: the epoch count continues too
    optimizers = torch.load(os.path.join(second.checkpoint_dir, "optimizers.pt"), weights_only=True)
    assert set(optimizers) == {"l2h", "l2h_disc"}
    adam_steps = {float(s["step"]) for opt in optimizers.values() for s in opt["state"].values()}
    assert adam_steps == {6.0}  # Adam's state was restored, not restarted
    for result in (first, second):
        shutil.rmtree(result.checkpoint_dir)


@pytest.mark.timeout(300)
def test_bf16_channels_last_fit_saves_fp32_weights_that_load_and_resume(datasets, tmp_path):
    from fsr_core.training import checkpoint as ckpt

    common = dict(storage_path=str(tmp_path / "ray"), num_workers=0, use_gpu=False, max_failures=0, num_to_keep=1)
    fast = dict(precision="bf16", channels_last=True)
    first = fit(train_config=loop_config("unsupervised", max_steps=2, **fast), datasets=datasets, run_name="a", **common)
    saved = shutil.copytree(first.checkpoint_dir, tmp_path / "step2")
    weights = torch.load(os.path.join(saved, "weights", "h2l.pt"), weights_only=True)
    assert weights and all(v.dtype == torch.float32 for v in weights.values() if v.is_floating_point())
    network = ckpt.load_networks(str(saved), names=["l2h"])["l2h"]  # a plain NCHW fp32 network
    with torch.no_grad():
        out = network(torch.zeros(1, 3, 16, 16))
    assert out.shape == (1, 3, 128, 128) and out.dtype == torch.float32 and torch.isfinite(out).all()
    second = fit(train_config=loop_config("unsupervised", max_steps=4, resume_checkpoint=str(saved), **fast),
                 datasets=datasets, run_name="b", **common)
    assert read_state(second.checkpoint_dir)["step"] == 4
    for result in (first, second):
        shutil.rmtree(result.checkpoint_dir)


# ---------------------------------------------------------------------------- distributed
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_distributed_fit_on_s3_survives_a_failure_and_resumes(datasets, s3_bucket, mlflow_run, tmp_path):
    """Two workers (DDP, gloo), storage in the moto bucket; rank 1 raises before step 3 on the first
    attempt; FailureConfig restarts the group, which resumes from the step-2 checkpoint."""
    from mlflow.tracking import MlflowClient

    tracking_uri, run_id = mlflow_run
    marker = tmp_path / "failed-once"
    result = fit(
        train_config=loop_config(
            "unsupervised", max_steps=4, sample_every=4, tracking_uri=tracking_uri, run_id=run_id,
            fail_at_step=3, fail_marker_path=str(marker),
        ),
        datasets=datasets, storage_path=f"{s3_bucket}/train", run_name="dist",
        num_workers=2, use_gpu=False, cpus_per_worker=0.5, max_failures=1, num_to_keep=1,
    )
    assert marker.exists()  # the failure did happen
    state = read_state(result.checkpoint_dir)
    assert state["step"] == 4 and state["world_size"] == 2
    assert (state["attempt_start_step"], state["restored_from"]) == (2, "ray_checkpoint")
    assert result.temporary  # downloaded from S3
    assert sorted(os.listdir(os.path.join(result.checkpoint_dir, "weights"))) == [
        "h2l.pt", "h2l_disc.pt", "l2h.pt", "l2h_disc.pt"
    ]
    # checkpoints live in the bucket; num_to_keep=1 leaves one
    keys = [info.uri.split("/train/dist/", 1)[1] for info in storage.list_files(f"{s3_bucket}/train/dist")]
    folders = {key.split("/", 1)[0] for key in keys if "/" in key}
    assert len(folders) == 1 and folders.pop().startswith("checkpoint_")
    # MLflow from rank 0 only: one loss point per logged step, the last step exactly once
    steps = [m.step for m in MlflowClient(tracking_uri=tracking_uri).get_metric_history(run_id, "l2h_pixel")]
    assert steps.count(4) == 1 and set(steps) == {1, 2, 3, 4}
    shutil.rmtree(result.checkpoint_dir)


def _means_on_rank(rank: int, port: int, queue) -> None:
    import torch.distributed as dist

    from fsr_core.training.loop import global_means

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        # rank 0 saw 2 steps (losses 1 and 3), rank 1 saw 2 steps (losses 5 and 7)
        sums = {"loss": [4.0, 12.0][rank], "other": [0.0, 2.0][rank]}
        queue.put((rank, global_means(sums, 2)))
    finally:
        dist.destroy_process_group()


def test_logged_means_are_over_all_workers():
    """Two real processes in a gloo group (loopback): both get the mean over every worker's steps."""
    import socket

    import torch.multiprocessing as mp

    from fsr_core.training.loop import global_means

    assert global_means({"loss": 6.0}, 3) == {"loss": 2.0}  # no process group: this process's own
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_means_on_rank, args=(rank, port, queue)) for rank in range(2)]
    for worker in workers:
        worker.start()
    results = dict(queue.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert results[0] == results[1] == {"loss": 4.0, "other": 0.5}


def _first_pixels(ds, *, seed: int, batches: int) -> list[list[float]]:
    from fsr_core.training.loop import _batches

    stream = _batches(ds.iterator(), name="hr", spec=DataSpec(size=128), batch_size=4, shuffle_buffer=16, seed=seed)
    return [[round(float(v), 5) for v in next(stream)[1]["image"][:, 0, 0, 0]] for _ in range(batches)]


def test_seeded_shuffle_differs_per_epoch_and_repeats_per_seed(datasets):
    from ray.data import DataContext

    context = DataContext.get_current()
    kept = context.execution_options.preserve_order
    context.execution_options.preserve_order = True  # what fit(deterministic_data=True) sets for Train
    try:
        hr = datasets["hr"]
        first = _first_pixels(hr, seed=1, batches=8)  # 16 rows, 4 a batch: two epochs
        assert first == _first_pixels(hr, seed=1, batches=8)  # the same seed, the same order
        assert first[:4] != first[4:]  # another order in the second epoch
        assert sorted(sum(first[:4], [])) == sorted(sum(first[4:], []))  # the same rows
        assert first != _first_pixels(hr, seed=2, batches=8)
    finally:
        context.execution_options.preserve_order = kept


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("fast", [{}, {"precision": "bf16", "channels_last": True}], ids=["fp32", "bf16_channels_last"])
def test_deterministic_fits_repeat_exactly(datasets, tmp_path, fast):
    common = dict(num_workers=1, use_gpu=False, max_failures=0, num_to_keep=1, deterministic_data=True)
    config = loop_config("supervised", max_steps=6, report_every=6, shuffle_buffer=8, seed=3, torch_threads=1, **fast)
    weights = []
    for name in ("a", "b"):
        result = fit(train_config=config, datasets={"hr": datasets["hr"]}, run_name=name,
                     storage_path=str(tmp_path / name), **common)
        weights.append(torch.load(os.path.join(result.checkpoint_dir, "weights", "l2h.pt"), weights_only=True))
        shutil.rmtree(result.checkpoint_dir)
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_progress_keeps_the_step_total_when_a_loss_is_named_total():
    """The face embedder's loss is called ``total``: the console still gets ``max_steps`` as the
    total and the loss beside it under another name (it once showed ``12/4 steps (292%)``)."""
    from fsr_core.training.loop import _Progress

    reports = []
    progress = _Progress(lambda key, fields: reports.append((key, fields)), "embedder", 300, "total")
    progress.step(12, {"total": 4.2, "softmax": 4.1})
    assert reports == [("embedder", {"done": 12, "total": 300, "unit": "steps", "total_loss": 4.2})]
    reports.clear()
    _Progress(lambda key, fields: reports.append(fields), "pretrain", 300, "l2h_total").step(5, {"l2h_total": 0.01})
    assert reports == [{"done": 5, "total": 300, "unit": "steps", "l2h_total": 0.01}]
