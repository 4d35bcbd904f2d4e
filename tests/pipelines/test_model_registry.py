"""Model Registry round trips: register a checkpoint's network as a pyfunc model, load it back by
alias, version and logged-model id (local and S3 artifacts), move aliases, name missing URIs."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from fsr_core import storage
from fsr_core.networks.two_step import L2HGenerator
from fsr_core.restore.batch import images_to_tensor, super_resolve
from fsr_core.training.checkpoint import save_checkpoint
from pipelines.model_registry import ModelNotFoundError, load_network, register_network, resolve_model

TINY = dict(channels=8, blocks_per_section=(1, 1, 1, 1), reduction=4)
NAME = "two_step_l2h"


def _checkpoint(folder: str, seed: int) -> tuple[str, L2HGenerator]:
    torch.manual_seed(seed)
    network = L2HGenerator(**TINY).eval()
    other = L2HGenerator(channels=4, blocks_per_section=(1, 1), reduction=2)  # a second network, not registered
    networks = {"l2h": ("l2h_generator", network), "other": ("l2h_generator", other)}
    ema = {"l2h": L2HGenerator(**TINY)} if seed == 0 else None  # EMA weights: another set of values
    save_checkpoint(folder, networks=networks, ema=ema, train_state={"step": 7})
    return folder, network


def _ema(folder: str) -> torch.nn.Module:
    from fsr_core.networks import NETWORKS
    from fsr_core.training.checkpoint import load_networks

    return load_networks(folder, NETWORKS, names=["l2h"], ema=True)["l2h"].eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return [_checkpoint(str(root / f"ckpt{seed}"), seed) for seed in (0, 1)]


def _run(tracking_uri: str, artifact_location: str | None = None) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("registry-test", artifact_location=artifact_location)
    return client.create_run(experiment).info.run_id


def _lr(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x = images_to_tensor(_lr())
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def test_register_then_load_by_alias_version_and_id(checkpoints, tracking_uri, tmp_path):
    import mlflow.artifacts
    from mlflow import MlflowClient

    (folder, original), _ = checkpoints
    run_id = _run(tracking_uri)
    uri = register_network(checkpoint_dir=folder, network="l2h", registered_name=NAME, alias="champion",
                           tracking_uri=tracking_uri, run_id=run_id)
    assert uri == f"models:/{NAME}/1"

    by_alias, info = load_network(f"models:/{NAME}@champion", tracking_uri=tracking_uri)
    assert not by_alias.training
    assert _same_outputs(by_alias, original)
    assert info["name"] == NAME and info["version"] == 1 and info["model_uri"] == uri
    assert info["class"] == "l2h_generator" and info["kwargs"]["channels"] == 8 and info["scale"] == 8
    assert info["network"] == "l2h" and info["run_id"] == run_id and info["model_id"].startswith("m-")

    by_version, _ = load_network(uri, tracking_uri=tracking_uri)
    by_id, id_info = load_network(f"models:/{info['model_id']}", tracking_uri=tracking_uri)
    assert _same_outputs(by_version, original) and _same_outputs(by_id, original)
    assert id_info["version"] is None and id_info["model_uri"] == f"models:/{info['model_id']}"
    # A resolved ModelRef loads from the model's files alone (what Ray actors get): no store access.
    ref = resolve_model(f"models:/{NAME}@champion", tracking_uri=tracking_uri)
    from_ref, ref_info = load_network(ref, tracking_uri=f"sqlite:///{tmp_path}/absent/none.db")
    assert _same_outputs(from_ref, original) and ref_info["version"] == 1
    assert not (tmp_path / "absent").exists()

    client = MlflowClient(tracking_uri)
    version = client.get_model_version(NAME, "1")
    assert version.tags["fsr_source_run_id"] == run_id and version.run_id == run_id
    assert version.tags["fsr_network_class"] == "l2h_generator" and version.tags["fsr_network"] == "l2h"
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    assert [m.model_id for m in client.get_run(run_id).outputs.model_outputs] == [info["model_id"]]
    # Only the one network, and no pickled code: python_model.pkl names the class, nothing more.
    model_dir = mlflow.artifacts.download_artifacts(
        artifact_uri=resolve_model(uri, tracking_uri=tracking_uri).download_uri, tracking_uri=tracking_uri
    )
    assert sorted(os.listdir(os.path.join(model_dir, "artifacts"))) == ["l2h.pt", "networks.json"]
    pickled = open(os.path.join(model_dir, "python_model.pkl"), "rb").read()
    assert b"pipelines.model_registry" in pickled and b"NetworkModel" in pickled and len(pickled) < 500


def test_pyfunc_predict_maps_uint8_images_to_uint8_images(checkpoints, tracking_uri, monkeypatch):
    import mlflow

    (folder, original), _ = checkpoints
    register_network(checkpoint_dir=folder, network="l2h", registered_name=NAME, alias="champion",
                     tracking_uri=tracking_uri, run_id=_run(tracking_uri))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)  # how a user points MLflow at the server
    assert mlflow.get_tracking_uri() == tracking_uri
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion", model_config={"batch_size": 2})
    lr = _lr(5)  # three predict batches
    sr = model.predict(lr)
    assert sr.dtype == np.uint8 and sr.shape == (5, 128, 128, 3)
    expected = super_resolve(original, lr)
    diff = np.abs(sr.astype(int) - expected.astype(int))  # batch composition: float noise only
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    with pytest.raises(Exception, match="uint8|float"):
        model.predict(lr.astype(np.float32))


def test_alias_moves_to_a_new_version(checkpoints, tracking_uri):
    (folder0, net0), (folder1, net1) = checkpoints
    run_id = _run(tracking_uri)
    first = register_network(checkpoint_dir=folder0, network="l2h", registered_name=NAME, alias="champion",
                             tracking_uri=tracking_uri, run_id=run_id)
    second = register_network(checkpoint_dir=folder1, network="l2h", registered_name=NAME, alias="champion",
                              tracking_uri=tracking_uri, run_id=run_id)
    third = register_network(checkpoint_dir=folder0, network="l2h", registered_name=NAME, alias=None,
                             tracking_uri=tracking_uri, run_id=run_id, ema=True)
    assert (first, second, third) == (f"models:/{NAME}/1", f"models:/{NAME}/2", f"models:/{NAME}/3")
    champion, info = load_network(f"models:/{NAME}@champion", tracking_uri=tracking_uri)
    assert info["version"] == 2 and info["model_uri"] == second and info["requested_uri"].endswith("@champion")
    assert _same_outputs(champion, net1) and not _same_outputs(champion, net0)
    assert _same_outputs(load_network(first, tracking_uri=tracking_uri)[0], net0)  # old versions stay
    assert resolve_model(f"models:/{NAME}/latest", tracking_uri=tracking_uri).version == 3
    with_ema, _ = load_network(third, tracking_uri=tracking_uri)  # no alias moved, EMA weights
    assert _same_outputs(with_ema, _ema(folder0)) and not _same_outputs(with_ema, net0)
    assert load_network(f"models:/{NAME}@champion", tracking_uri=tracking_uri)[1]["version"] == 2
    from mlflow import MlflowClient

    assert MlflowClient(tracking_uri).get_model_version(NAME, "3").tags["fsr_weights"] == "ema"


def test_missing_models_and_bad_inputs_are_named(checkpoints, tracking_uri):
    (folder, _), _ = checkpoints
    run_id = _run(tracking_uri)
    register_network(checkpoint_dir=folder, network="l2h", registered_name=NAME, alias="champion",
                     tracking_uri=tracking_uri, run_id=run_id)
    for uri in (f"models:/{NAME}@nobody", f"models:/{NAME}/9", "models:/no_such_model@champion",
                "models:/no_such_model/1", "models:/m-0123456789abcdef"):
        with pytest.raises(ModelNotFoundError, match=uri.replace("/", ".")):
            load_network(uri, tracking_uri=tracking_uri)
    with pytest.raises(ValueError, match="runs:/abc/model"):
        load_network("runs:/abc/model", tracking_uri=tracking_uri)
    with pytest.raises(KeyError, match="no network 'missing'"):
        register_network(checkpoint_dir=folder, network="missing", registered_name=NAME, alias=None,
                         tracking_uri=tracking_uri, run_id=run_id)
    with pytest.raises(FileNotFoundError, match=r"weights/l2h\.ema\.pt"):  # checkpoint 1 keeps no EMA
        register_network(checkpoint_dir=checkpoints[1][0], network="l2h", registered_name=NAME, alias=None,
                         tracking_uri=tracking_uri, run_id=run_id, ema=True)
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        register_network(checkpoint_dir=folder + "-nope", network="l2h", registered_name=NAME, alias=None,
                         tracking_uri=tracking_uri, run_id=run_id)


def test_checkpoint_and_artifacts_on_s3(checkpoints, tracking_uri, s3_bucket):
    import boto3

    (folder, original), _ = checkpoints
    remote = f"{s3_bucket}/checkpoints/ckpt0"  # e.g. where Ray Train left it
    for name in ("networks.json", "weights/l2h.pt"):
        storage.upload_file(os.path.join(folder, name), f"{remote}/{name}")
    run_id = _run(tracking_uri, artifact_location=f"{s3_bucket}/mlflow")
    uri = register_network(checkpoint_dir=remote, network="l2h", registered_name=NAME, alias="challenger",
                           tracking_uri=tracking_uri, run_id=run_id)
    bucket = s3_bucket[len("s3://"):]
    keys = [obj["Key"] for obj in boto3.client("s3").list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(key.startswith("mlflow/models/m-") and key.endswith("/artifacts/l2h.pt") for key in keys), keys
    assert resolve_model(uri, tracking_uri=tracking_uri).download_uri.startswith(s3_bucket)
    loaded, info = load_network(f"models:/{NAME}@challenger", tracking_uri=tracking_uri)
    assert info["version"] == 1 and _same_outputs(loaded, original)
