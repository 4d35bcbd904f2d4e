"""Stage sair_latent on demo-world renders (a tiny generator, a random embedder as a stand-in T): the pool of
the last render per identity, the expression directions, the ablation logged to MLflow, the two restorers;
reference pools as folders and ``fsr restore --references`` swapping a restorer's pool."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fsr_core.restore.restorer import export_restorer, load_bundle
from fsr_core.training.checkpoint import save_checkpoint
from pipelines.stage import StageContext
from pipelines.stages.sair import SairLatentParams, pick_references, sair_latent
from tests.fsr_core.inversion.conftest import tiny_generator


def write_demo_faces(folder: str, identities: list[int], *, renders: int, size: int = 32) -> str:
    from fsr_core.data.demo_world import synthetic_face_rows
    from fsr_core.data.shards import ShardWriter

    with ShardWriter(folder) as writer:
        for row in synthetic_face_rows(identities, renders_per_identity=renders, size=size, seed=0,
                                       split_fractions={"train": 1.0}):
            writer.write(row)
    return folder


@pytest.fixture()
def checkpoints(tmp_path):
    from fsr_core.networks.face_embedder import FaceEmbedder

    generator = tiny_generator()
    save_checkpoint(str(tmp_path / "prior"), networks={"generator": generator}, ema={"generator": generator},
                    train_state={"step": 1})
    torch.manual_seed(0)
    embedder = FaceEmbedder(input_size=16, embedding_dim=8, channels=[4, 8], blocks_per_stage=0).eval()
    save_checkpoint(str(tmp_path / "embedder"), networks={"embedder": embedder}, train_state={"step": 1})
    return str(tmp_path / "prior"), str(tmp_path / "embedder")


def test_pick_references_takes_the_last_renders():
    refs, others = pick_references(["a", "a", "b", None, "b", "b"], per_identity=1)
    assert refs == [1, 5] and others == [0, 2, 4]
    with pytest.raises(ValueError, match="two or more"):
        pick_references(["a", "a"], per_identity=1)


@pytest.mark.parametrize("reference_identity", ["auto", "given"])
def test_stage_builds_pool_directions_ablation_and_restorers(ray_session, tmp_path, checkpoints, reference_identity,
                                                            monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    prior, embedder = checkpoints
    references = write_demo_faces(str(tmp_path / "refs"), [100000, 100001, 100002], renders=2)
    attributes = write_demo_faces(str(tmp_path / "attrs"), list(range(8)), renders=2)
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=tracking)
    run = client.create_run(client.create_experiment("sair", artifact_location=str(tmp_path / "artifacts")))
    params = SairLatentParams(
        lr_size=4, attribute_split="train", attribute_names=["smiling"], max_attribute_faces=16,
        inversion={"steps": 3, "learning_rate": 0.1, "perceptual": "none"},
        sair={"steps": 2, "identity_network": "face_embedder", "degradation": {"noise_sigma": "auto"},
              "reference_identity": reference_identity},
        ablation_faces=2, statistics_samples=200, batch_size=8, task_cpus=0.5, torch_threads=1)
    outputs = {name: str(tmp_path / "out" / name) for name in ("checkpoint", "codes", "pool")}
    ctx = StageContext(pipeline="t", stage="sair", params=params, outputs=outputs, work_dir=str(tmp_path / "out"),
                       run_id=run.info.run_id, tracking_uri=tracking)
    assert sair_latent(ctx, generator=prior, references=references, attributes=attributes, embedder=embedder) == outputs

    from pipelines.inversion_job import read_codes
    from pipelines.references import load_pool

    codes = read_codes(outputs["codes"])
    assert sorted(set(codes.column("set").to_pylist())) == ["attributes", "references"]
    pool = load_pool(outputs["pool"])
    assert sorted(pool.identities) == ["synthetic-0-100000", "synthetic-0-100001", "synthetic-0-100002"]
    assert pool.codes.shape == (3, 6, 16) and pool.identity == "face_embedder"
    assert torch.allclose(pool.embeddings.norm(dim=1), torch.ones(3), atol=1e-5)

    metrics = client.get_run(run.info.run_id).data.metrics
    for variant in ("full", "no_identity", "no_expression", "no_histogram", "fidelity_only", "wrong_reference"):
        assert f"ablation_{variant}_identity_face_embedder" in metrics and f"ablation_{variant}_lr_error" in metrics
    assert metrics["ablation_wrong_reference_reference_correct"] == 0.0
    if reference_identity == "given":  # the ablation hands its faces' identities over: always the right person
        assert metrics["ablation_full_reference_correct"] == 1.0
    assert metrics["references"] == 3 and 0.5 <= metrics["direction_smiling_latent_accuracy"] <= 1.0
    artifact = json.loads(open(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="sair_ablation.json", tracking_uri=tracking)).read())
    assert artifact["variants"]["fidelity_only"]["terms"] == {"fidelity": True, "identity": False,
                                                              "expression": False, "histogram": False}

    faces = np.random.default_rng(1).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    for name, choice in (("sair", "nearest"), ("sair_wrong_reference", "wrong_identity")):
        card = export_restorer(outputs["checkpoint"], name, str(tmp_path / name))
        assert card.search == "sair" and card.scale == 4 and card.settings["reference_choice"] == choice
        restorer = load_bundle(str(tmp_path / name))
        assert set(restorer.networks) == {"generator", "prior", "references", "expressions", "embedder"}
        if reference_identity == "auto":
            assert card.conditions == ()
            assert restorer.restore(faces, batch_size=2).shape == (2, 16, 16, 3)
        else:  # the cards read each face's identity
            assert card.conditions == ("identity",)
            with pytest.raises(ValueError, match="condition 'identity'"):
                restorer.restore(faces)
            names = ["synthetic-0-100002", "synthetic-0-100000"]
            assert restorer.restore(faces, batch_size=2, conditions={"identity": names}).shape == (2, 16, 16, 3)
    if reference_identity == "given":  # registered: the pyfunc flavor takes the identities as params
        from pipelines.model_registry import register_restorer

        uri = register_restorer(checkpoint_dir=outputs["checkpoint"], restorer="sair", registered_name="sair_given",
                                alias=None, tracking_uri=tracking, run_id=run.info.run_id)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
        model = mlflow.pyfunc.load_model(uri)
        expected = load_bundle(str(tmp_path / "sair")).restore(faces, conditions={"identity": names})
        assert np.array_equal(model.predict(faces, params={"identity": names}), expected)
        with pytest.raises(Exception, match="condition 'identity'"):
            model.predict(faces)


def test_references_flag_swaps_the_pool(tmp_path, monkeypatch):
    """``fsr restore --references URI``: the loader puts the pool folder in place of the restorer's own and
    refuses a pool that does not fit the restorer."""
    import argparse

    import pipelines.model_registry as registry
    from fsr_core.networks.sair import ExpressionDirections, ReferencePool
    from fsr_core.restore.restorer import LatentSearchRestorer, RestorerCard
    from pipelines.references import load_restorer_with_references, save_pool
    from pipelines.restore_cli import _reference_loader, add_restore_command

    generator = tiny_generator()

    def pool(names, embedding_dim=8):
        return ReferencePool(identities=names, layers=6, style_dim=16, embedding_dim=embedding_dim,
                             identity="face_embedder").set(codes=torch.randn(len(names), 6, 16),
                                                           embeddings=torch.randn(len(names), embedding_dim))

    card = RestorerCard(kind="latent_search", input_size=4, scale=4, search="sair",
                        networks=("generator", "references", "expressions"), settings={"steps": 1})
    expressions = ExpressionDirections(attributes=["smiling"], layers=6, style_dim=16, lr_size=4)
    restorer = LatentSearchRestorer(card, {"generator": generator, "references": pool(["a", "b"]),
                                           "expressions": expressions})
    monkeypatch.setattr(registry, "load_restorer", lambda ref, device="cpu": (restorer, {"requested_uri": ref}))
    new = pool(["x", "y", "z"])
    save_pool(str(tmp_path / "pool"), new)
    loaded, info = load_restorer_with_references("models:/m@a", references=str(tmp_path / "pool"))
    assert loaded.networks["references"].identities == ["x", "y", "z"]
    assert torch.equal(loaded.networks["references"].codes, new.codes) and info["references"] == str(tmp_path / "pool")
    save_pool(str(tmp_path / "other"), pool(["x", "y"], embedding_dim=4))
    with pytest.raises(ValueError, match="embedding_dim"):
        load_restorer_with_references("models:/m@a", references=str(tmp_path / "other"))
    with pytest.raises(FileNotFoundError, match="not a reference pool"):
        load_restorer_with_references("models:/m@a", references=str(tmp_path / "nothing"))

    parser = argparse.ArgumentParser()
    add_restore_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["restore", "--input", "i", "--output", "o", "--model", "m",
                              "--references", str(tmp_path / "pool")])
    loader = _reference_loader(args)["loader"]
    assert loader.keywords == {"references": str(tmp_path / "pool"), "identity": None}
    assert _reference_loader(parser.parse_args(["restore", "--input", "i", "--output", "o", "--model", "m"])) == {}

    # --identity: every face of the archive is that person; only for a restorer that reads the condition
    from fsr_core.restore.restorer import FixedConditions

    args = parser.parse_args(["restore", "--input", "i", "--output", "o", "--model", "m", "--identity", "b"])
    loader = _reference_loader(args)["loader"]
    assert loader.keywords == {"references": None, "identity": "b"}
    with pytest.raises(ValueError, match="--identity is for restorers that read each face's identity"):
        loader("models:/m@a")
    conditioned = LatentSearchRestorer(
        RestorerCard(kind="latent_search", input_size=4, scale=4, search="sair", conditions=("identity",),
                     networks=("generator", "references", "expressions"),
                     settings={"steps": 1, "reference_identity": "given", "identity": False, "expression": False,
                               "histogram": False}),
        {"generator": generator, "references": pool(["a", "b"]), "expressions": expressions})
    monkeypatch.setattr(registry, "load_restorer", lambda ref, device="cpu": (conditioned, {"requested_uri": ref}))
    fixed, info = loader("models:/m@a")
    assert isinstance(fixed, FixedConditions) and fixed.fixed == {"identity": "b"} and info["identity"] == "b"
    # the archive job loads the restorer once before any work: without --identity this card is refused there
    from types import SimpleNamespace

    from pipelines.archive_restore import _check_restorer

    ref = SimpleNamespace(uri="models:/m/1")
    with pytest.raises(ValueError, match="reads each face's identity .* fsr restore --identity NAME"):
        _check_restorer(ref, lambda r, device="cpu": (conditioned, {}))
    _check_restorer(ref, loader)  # with --identity: fine
    _check_restorer(ref, lambda r, device="cpu": (restorer, {}))  # a card that names no condition: fine
    assert _reference_loader(args)["restorer_inputs"] == {"identity": "b"}  # recorded in the plan
    with pytest.raises(ValueError, match="no reference of identity 'x'"):
        _reference_loader(parser.parse_args(["restore", "--input", "i", "--output", "o", "--model", "m",
                                             "--identity", "x"]))["loader"]("models:/m@a")
    # the pool given with --references is the one the identity must be in
    fixed, _ = _reference_loader(parser.parse_args(["restore", "--input", "i", "--output", "o", "--model", "m",
                                                    "--identity", "x", "--references", str(tmp_path / "pool")])
                                 )["loader"]("models:/m@a")
    assert fixed.networks["references"].identities == ["x", "y", "z"]


def test_sair_demo_pipeline_validates_and_compares_the_methods():
    import os

    from pipelines.config import load_config
    from pipelines.stages import STAGES

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    config = load_config("sair_demo", registry=STAGES, conf_dir=os.path.join(root, "conf"))
    stages = {stage.name: stage for stage in config.pipeline.stages}
    compare = stages["compare"].inputs
    assert {"model_pulse", "model_two_step", "model_sair", "model_sair_wrong_reference"} <= set(compare)
    # the references are other renders of the compared identities
    assert stages["sair"].inputs["references"] == "reference_faces.faces" and compare["hr"] == "camera_faces.faces"
    assert config.stage_params["sair"].references_per_identity == 1
