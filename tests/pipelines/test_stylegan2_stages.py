"""The StyleGAN2 prior: its objective (R1 against finite differences, the lazy-regularisation Adam,
the EMA half-life, a resumed run repeating a straight one) and the ``stylegan2_prior`` stage through
the runner on a Ray Train worker, resumed from its checkpoint, read back by load_stylegan2_checkpoint."""

from __future__ import annotations

import json
import os

import cv2
import pytest
import torch
from pydantic import ValidationError

from fsr_core.losses.adversarial import r1_penalty
from fsr_core.networks.stylegan2 import CHECKPOINT_FILE, Discriminator, load_stylegan2_checkpoint
from fsr_core.training.stylegan2_objective import StyleGAN2Objective, adam_for_lazy_regularisation
from pipelines.config import load_config
from pipelines.runner import run_pipeline
from pipelines.stages.stylegan2 import STYLEGAN2_PRIOR, StyleGAN2PriorParams
from tests.pipelines.test_selfsr_stages import write, write_faces

TINY = {"size": 8, "generator": {"style_dim": 8, "n_mlp": 2, "channels": [8, 4]},
        "discriminator": {"channels": [8, 4]}, "batch_size": 4}


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


def _batch(index: int, size: int = 8) -> dict:
    return {"hr": {"image": torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(index)) * 2 - 1}}


def _equal(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(torch.equal(a[key], b[key]) for key in a)


# ---------------------------------------------------------------------------- the objective
def test_r1_penalty_matches_central_finite_differences_through_the_stylegan2_discriminator() -> None:
    torch.manual_seed(0)
    discriminator = Discriminator(size=8, channels=[4, 4]).double()
    with torch.no_grad():
        for p in discriminator.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    penalty = r1_penalty(discriminator(x), x)

    h, grad = 1e-6, torch.zeros_like(x)
    with torch.no_grad():
        flat = x.detach().clone().view(-1)
        for i in range(flat.numel()):
            flat[i] += h
            plus = discriminator(flat.view_as(x)).sum()
            flat[i] -= 2 * h
            minus = discriminator(flat.view_as(x)).sum()
            flat[i] += h
            grad.view(-1)[i] = (plus - minus) / (2 * h)
    expected = grad.square().flatten(1).sum(1).mean()
    assert float(expected) > 0
    assert float(penalty.detach()) == pytest.approx(float(expected), rel=1e-6)


def test_lazily_regularised_networks_get_corrected_adam_settings() -> None:
    weight = torch.nn.Parameter(torch.zeros(2))
    corrected = adam_for_lazy_regularisation([weight], lr=0.002, betas=(0.0, 0.99), every=16).param_groups[0]
    assert corrected["lr"] == pytest.approx(0.002 * 16 / 17)
    assert corrected["betas"] == pytest.approx((0.0, 0.99 ** (16 / 17)))
    plain = adam_for_lazy_regularisation([weight], lr=0.002, betas=(0.0, 0.99), every=0).param_groups[0]
    assert (plain["lr"], plain["betas"]) == (0.002, (0.0, 0.99))

    objective = StyleGAN2Objective(**TINY, d_reg_every=4)  # path length off: the generator is not corrected
    assert objective.optimizers["generator"].param_groups[0]["lr"] == pytest.approx(0.002)
    assert objective.optimizers["discriminator"].param_groups[0]["lr"] == pytest.approx(0.002 * 4 / 5)
    assert objective.r1_gamma == pytest.approx(0.0002 * 8 ** 2 / 4)  # StyleGAN2-ADA's heuristic when unset


def test_the_ema_generator_follows_the_half_life_in_images() -> None:
    objective = StyleGAN2Objective(**TINY, ema_kimg=0.008)  # half-life 8 images = 2 steps of 4
    assert objective.ema_beta() == pytest.approx(0.5 ** 0.5)
    before = {k: v.clone() for k, v in objective.ema["generator"].state_dict().items()}
    losses = objective.train_step(_batch(0), step=1)  # step 1: no lazy regulariser runs
    assert losses["ema_beta"] == pytest.approx(0.5 ** 0.5) and losses["r1"] == 0.0
    raw = objective.networks["generator"].state_dict()
    for key, value in objective.ema["generator"].state_dict().items():
        if key.startswith("noises") or key.endswith("kernel"):
            assert torch.equal(value, raw[key])
        else:
            assert torch.allclose(value, before[key] + (1 - 0.5 ** 0.5) * (raw[key] - before[key]), atol=1e-6)
    ramped = StyleGAN2Objective(**TINY, ema_rampup=0.5)
    ramped.images_seen = 8  # half-life min(10k, 8 * 0.5) = 4 images: one step halves
    assert ramped.ema_beta() == pytest.approx(0.5)


def test_a_resumed_objective_repeats_the_straight_run_and_its_checkpoint_reads_as_rosinalitys(tmp_path) -> None:
    settings = {**TINY, "d_reg_every": 2, "path_regularize": 2.0, "g_reg_every": 2, "ema_kimg": 0.01}
    straight = StyleGAN2Objective(**settings)
    runs = [straight.train_step(_batch(step), step=step) for step in range(4)]
    assert runs[0]["r1"] > 0 and runs[0]["path_length"] > 0 and runs[2]["r1"] != runs[0]["r1"]
    assert runs[1]["r1"] == runs[0]["r1"]  # the latest value, reported on the steps between

    first = StyleGAN2Objective(**settings)
    for step in range(2):
        first.train_step(_batch(step), step=step)
    folder = str(tmp_path / "checkpoint")
    first.save(folder, train_state={"step": 2})
    resumed = StyleGAN2Objective(**settings)
    assert resumed.load(folder) == {"step": 2}
    for step in range(2, 4):
        resumed.train_step(_batch(step), step=step)
    for name in ("generator", "discriminator"):
        assert _equal(straight.networks[name].state_dict(), resumed.networks[name].state_dict()), name
    assert _equal(straight.ema["generator"].state_dict(), resumed.ema["generator"].state_dict())

    saved = torch.load(os.path.join(folder, CHECKPOINT_FILE), weights_only=True)
    assert set(saved) == {"g", "d", "g_ema", "g_optim", "d_optim", "latent_avg", "config"}
    assert _equal(saved["d"], first.networks["discriminator"].state_dict())
    generator, latent_avg = load_stylegan2_checkpoint(folder)
    assert _equal(generator.state_dict(), first.ema["generator"].state_dict())
    z = torch.randn(4096, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(latent_avg, generator.get_latent(z).mean(0).detach(), atol=1e-6)


def test_params_are_stylegan2s_and_reject_unknown_keys() -> None:
    p = StyleGAN2PriorParams()
    kwargs = p.objective_kwargs()
    assert (p.lr, p.betas, p.d_reg_every, p.g_reg_every, p.mixing, p.ema_kimg) == (0.002, (0.0, 0.99), 16, 4, 0.9, 10.0)
    assert kwargs["generator"] == {"style_dim": 512, "n_mlp": 8, "channel_multiplier": 2, "channels": None,
                                   "lr_mlp": 0.01}
    assert kwargs["path_regularize"] == 0.0 and StyleGAN2PriorParams(use_gpu=True).objective_kwargs()[
        "path_regularize"] == 2.0
    assert STYLEGAN2_PRIOR.inputs == ("hr",) and STYLEGAN2_PRIOR.outputs == ("checkpoint", "train_run")
    with pytest.raises(ValidationError, match="extra"):
        StyleGAN2PriorParams(r1=10)
    with pytest.raises(ValidationError, match="extra"):
        StyleGAN2PriorParams(generator={"latent": 512})
    with pytest.raises(ValidationError, match="power of two"):
        StyleGAN2PriorParams(size=48)
    with pytest.raises(ValidationError, match="widths"):
        StyleGAN2PriorParams(size=32, generator={"channels": [8, 8, 8]})


# ---------------------------------------------------------------------------- the stage
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_tiny_prior_through_the_runner_then_resumed_from_its_checkpoint(ray_session, tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    from fsr_core.data.ray_datasets import training_dataset
    from fsr_core.training.trainer import fit

    hr = write_faces(str(tmp_path / "data" / "hr"), count=8, size=32, seed=0)
    root = tmp_path / "conf"
    write(root / "base.yaml", {"runtime": {"work_root": f"{tmp_path}/work"}, "tracking": {"experiment": "prior"}})
    write(root / "catalog.yaml", {"catalog": {"hr": {"uri": hr, "kind": "shards"}}})
    params = {"size": 16, "generator": {"style_dim": 8, "n_mlp": 2, "channels": [8, 8, 4]},
              "discriminator": {"channels": [8, 8, 4]}, "max_steps": 2, "batch_size": 4, "d_reg_every": 2,
              "report_every": 1, "log_every": 1, "sample_every": 2, "sample_count": 2, "num_workers": 1,
              "torch_threads": 1}
    write(root / "pipelines" / "prior.yaml", {"pipeline": {"name": "prior", "stages": [
        {"name": "prior", "uses": "stylegan2_prior", "inputs": {"hr": "hr"}, "params": params}]}})
    registry = {"stylegan2_prior": STYLEGAN2_PRIOR}
    result = run_pipeline(load_config("prior", registry=registry, conf_dir=str(root)), registry=registry, printer=None)
    assert result.executed == ["prior"]
    plan = result.stages["prior"]
    folder = plan.outputs["checkpoint"]
    with open(os.path.join(folder, "train_state.json")) as fh:
        state = json.load(fh)
    assert (state["step"], state["restored_from"]) == (2, "scratch")
    generator, latent_avg = load_stylegan2_checkpoint(folder)
    assert generator.config["channels"] == [8, 8, 4] and latent_avg.shape == (8,)
    assert generator([torch.randn(2, 8)])[0].shape == (2, 3, 16, 16)

    client = MlflowClient(tracking_uri=result.tracking_uri)
    for key in ("d_loss", "g_loss", "r1", "ema_beta"):
        assert [m.step for m in client.get_metric_history(plan.run_id, key)] == [1, 2], key
    samples = [a.path for a in client.list_artifacts(plan.run_id, "samples")]
    assert samples == ["samples/step_00000002.png"]
    grid = cv2.imread(client.download_artifacts(plan.run_id, samples[0], str(tmp_path / "grid")))
    assert grid.shape[:2] == (3 * 16, 2 * 16)  # rows real | generator | ema, two columns

    # resume from the stage's checkpoint: the step count continues to 4
    p = StyleGAN2PriorParams(**{**params, "max_steps": 4, "num_workers": 0})
    fitted = fit(
        train_config={"objective": StyleGAN2Objective, "objective_kwargs": p.objective_kwargs(), "max_steps": 4,
                      "batch_size": 4, "report_every": 4, "torch_threads": 1, "resume_checkpoint": folder},
        datasets={"hr": training_dataset(hr, size=16)}, storage_path=str(tmp_path / "ray"), run_name="resumed",
        num_workers=0, use_gpu=False)
    with open(os.path.join(fitted.checkpoint_dir, "train_state.json")) as fh:
        resumed = json.load(fh)
    assert (resumed["step"], resumed["attempt_start_step"], resumed["restored_from"]) == (4, 2, "resume_checkpoint")
    further, _ = load_stylegan2_checkpoint(fitted.checkpoint_dir)
    assert further.config == generator.config
    assert not torch.equal(further.state_dict()["style.1.weight"], generator.state_dict()["style.1.weight"])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_workers_train_with_every_phase_under_ddp(ray_session, tmp_path) -> None:
    """Dmain's two D forwards share one backward, lazy R1 and path length add ``0 * output``: every
    phase runs under DDP (gloo) on two Ray Train workers."""
    from fsr_core.data.ray_datasets import training_dataset
    from fsr_core.training import checkpoint as ckpt
    from fsr_core.training.trainer import fit

    hr = write_faces(str(tmp_path / "hr"), count=16, size=16, seed=0)
    kwargs = {**TINY, "size": 16, "generator": {"style_dim": 8, "n_mlp": 2, "channels": [8, 8, 4]},
              "discriminator": {"channels": [8, 8, 4]}, "batch_size": 8, "d_reg_every": 2,
              "path_regularize": 2.0, "g_reg_every": 2}
    result = fit(
        train_config={"objective": StyleGAN2Objective, "objective_kwargs": kwargs, "max_steps": 3, "batch_size": 8,
                      "report_every": 3, "log_every": 1, "torch_threads": 1},
        datasets={"hr": training_dataset(hr, size=16)}, storage_path=str(tmp_path / "ray"), run_name="ddp",
        num_workers=2, use_gpu=False, cpus_per_worker=0.5)
    state = ckpt.load_train_state(result.checkpoint_dir)
    assert (state["step"], state["world_size"]) == (3, 2)
    for key in ("d_loss", "g_loss", "r1", "path_length"):
        assert key in result.metrics
    generator, _ = load_stylegan2_checkpoint(result.checkpoint_dir)
    assert generator.config["size"] == 16
