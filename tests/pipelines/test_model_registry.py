"""Model Registry round trips: register a checkpoint's restorer (card + networks + weights, no
pickled code), load it back by alias, version and logged-model id (local and S3 artifacts), move
aliases, name missing URIs; the built-in bicubic restorer."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from fsr_core import storage
from fsr_core.networks.two_step import L2HGenerator
from fsr_core.restore.restorer import images_to_tensor, tensor_to_images
from fsr_core.training.checkpoint import load_networks, save_checkpoint
from fsr_core.training.objective import RestorerSpec
from pipelines.model_registry import ModelNotFoundError, load_restorer, register_restorer, resolve_model

TINY = dict(channels=8, blocks_per_section=(1, 1, 1, 1), reduction=4)
NAME = "two_step_l2h"


def _checkpoint(folder: str, seed: int) -> tuple[str, L2HGenerator]:
    torch.manual_seed(seed)
    network = L2HGenerator(**TINY).eval()
    pre = L2HGenerator(channels=4, blocks_per_section=(1,), reduction=2, attention_after_section=()).eval()  # x1
    networks = {"l2h": network, "pre": pre}
    ema = {"l2h": L2HGenerator(**TINY)} if seed == 0 else None  # EMA weights: another set of values
    restorers = {"l2h": RestorerSpec(kind="feed_forward", networks=("l2h",), input_size=16, scale=8).to_dict(),
                 "chain": RestorerSpec(kind="feed_forward", networks=("pre", "l2h"), input_size=16,
                                       scale=8).to_dict()}
    save_checkpoint(folder, networks=networks, ema=ema, restorers=restorers,
                    train_state={"step": 7, "objective": "test:Objective", "mlflow_run_id": "train-run"})
    return folder, network


def _ema(folder: str) -> torch.nn.Module:
    return load_networks(folder, names=["l2h"], ema=True)["l2h"].eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return [_checkpoint(str(root / f"ckpt{seed}"), seed) for seed in (0, 1)]


def register(folder: str, tracking_uri: str, run_id: str, *, restorer: str = "l2h", alias: str | None = "champion",
             **kwargs) -> str:
    return register_restorer(checkpoint_dir=folder, restorer=restorer, registered_name=NAME, alias=alias,
                             tracking_uri=tracking_uri, run_id=run_id, **kwargs)


def _run(tracking_uri: str, artifact_location: str | None = None) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("registry-test", artifact_location=artifact_location)
    return client.create_run(experiment).info.run_id


def _lr(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)


def _forward(network: torch.nn.Module, lr: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return tensor_to_images(network(images_to_tensor(lr)))


def _same_outputs(restorer, network: torch.nn.Module) -> bool:
    lr = _lr()
    return np.array_equal(restorer.restore(lr), _forward(network, lr))


def test_register_then_load_by_alias_version_and_id(checkpoints, tracking_uri, tmp_path):
    import mlflow.artifacts
    import yaml
    from mlflow import MlflowClient

    (folder, original), _ = checkpoints
    run_id = _run(tracking_uri)
    uri = register(folder, tracking_uri, run_id)
    assert uri == f"models:/{NAME}/1"

    by_alias, info = load_restorer(f"models:/{NAME}@champion", tracking_uri=tracking_uri)
    assert _same_outputs(by_alias, original)
    assert info["name"] == NAME and info["version"] == 1 and info["model_uri"] == uri
    assert info["kind"] == "feed_forward" and info["scale"] == 8 and info["input_size"] == 16
    assert info["run_id"] == run_id and info["model_id"].startswith("m-")
    card = info["card"]
    assert card["networks"] == ["l2h"] and card["name"] == "l2h" and card["alignment"] == "ffhq"
    assert card["training"]["run_id"] == "train-run" and card["training"]["step"] == 7
    assert card["method"] == "test:Objective" and card["value_range"] == [-1.0, 1.0] and card["output_size"] == 128

    by_version, _ = load_restorer(uri, tracking_uri=tracking_uri)
    by_id, id_info = load_restorer(f"models:/{info['model_id']}", tracking_uri=tracking_uri)
    assert _same_outputs(by_version, original) and _same_outputs(by_id, original)
    assert id_info["version"] is None and id_info["model_uri"] == f"models:/{info['model_id']}"
    # A resolved ModelRef loads from the model's files alone (what Ray actors get): no store access.
    ref = resolve_model(f"models:/{NAME}@champion", tracking_uri=tracking_uri)
    assert (ref.kind, ref.input_size, ref.scale, ref.alignment) == ("feed_forward", 16, 8, "ffhq")
    from_ref, ref_info = load_restorer(ref, tracking_uri=f"sqlite:///{tmp_path}/absent/none.db")
    assert _same_outputs(from_ref, original) and ref_info["version"] == 1
    assert not (tmp_path / "absent").exists()

    client = MlflowClient(tracking_uri)
    version = client.get_model_version(NAME, "1")
    assert version.tags["fsr_source_run_id"] == run_id and version.run_id == run_id
    assert version.tags["fsr_restorer"] == "l2h" and version.tags["fsr_kind"] == "feed_forward"
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    assert [m.model_id for m in client.get_run(run_id).outputs.model_outputs] == [info["model_id"]]
    # The bundle holds the restorer's networks only, and nothing pickled: MLflow loads it through an
    # installed module (loader_module), never through code stored in the artifact.
    model_dir = mlflow.artifacts.download_artifacts(artifact_uri=ref.download_uri, tracking_uri=tracking_uri)
    files = sorted(os.path.relpath(os.path.join(d, f), model_dir) for d, _, fs in os.walk(model_dir) for f in fs)
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".py", ".cloudpickle"))], files
    assert {"data/restorer/card.json", "data/restorer/networks.json", "data/restorer/weights/l2h.pt"} <= set(files)
    assert not [f for f in files if "pre.pt" in f]
    with open(os.path.join(model_dir, "MLmodel")) as fh:
        mlmodel = yaml.safe_load(fh)
    assert mlmodel["flavors"]["python_function"]["loader_module"] == "pipelines.model_registry"
    assert mlmodel["flavors"]["fsr_restorer"]["card"]["kind"] == "feed_forward"


def test_a_chained_restorer_and_grey_inputs(checkpoints, tracking_uri):
    (folder, original), _ = checkpoints
    checkpoint = load_networks(folder)
    run_id = _run(tracking_uri)
    uri = register(folder, tracking_uri, run_id, restorer="chain")
    chain, info = load_restorer(uri, tracking_uri=tracking_uri)
    assert info["card"]["networks"] == ["pre", "l2h"]
    lr = _lr()
    with torch.no_grad():
        expected = tensor_to_images(checkpoint["l2h"].eval()(checkpoint["pre"].eval()(images_to_tensor(lr))))
    np.testing.assert_array_equal(chain.restore(lr), expected)
    # a grey crop comes back grey (the card's colour handling); with grey_inputs=colour it does not
    grey = np.repeat(_lr(2)[..., :1], 3, axis=-1)
    out = chain.restore(grey)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    colour, _ = load_restorer(register(folder, tracking_uri, run_id, grey_inputs="colour"), tracking_uri=tracking_uri)
    coloured = colour.restore(grey)
    assert not (coloured[..., 0] == coloured[..., 2]).all()
    np.testing.assert_array_equal(coloured, _forward(original, grey))


def test_the_bicubic_restorer_needs_no_registry():
    from fsr_core.degradation.resize import imresize

    restorer, info = load_restorer("bicubic", tracking_uri="sqlite:////nonexistent/none.db")
    lr = _lr(2)
    np.testing.assert_array_equal(restorer.restore(lr), np.stack([imresize(im, output_size=(128, 128)) for im in lr]))
    assert (info["kind"], info["scale"], info["model_uri"]) == ("interpolation", 8, "bicubic")
    x4, _ = load_restorer("bicubic:x4")
    assert x4.restore(lr).shape == (2, 64, 64, 3)
    assert resolve_model("bicubic:x4").kind == "interpolation"


def test_pyfunc_predict_maps_uint8_images_to_uint8_images(checkpoints, tracking_uri, monkeypatch):
    import mlflow

    (folder, original), _ = checkpoints
    register(folder, tracking_uri, _run(tracking_uri))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)  # how a user points MLflow at the server
    assert mlflow.get_tracking_uri() == tracking_uri
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion", model_config={"batch_size": 2})
    lr = _lr(5)  # three predict batches
    sr = model.predict(lr)
    assert sr.dtype == np.uint8 and sr.shape == (5, 128, 128, 3)
    expected = _forward(original, lr)
    diff = np.abs(sr.astype(int) - expected.astype(int))  # batch composition: float noise only
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    with pytest.raises(Exception, match="uint8|float"):
        model.predict(lr.astype(np.float32))


def test_alias_moves_to_a_new_version(checkpoints, tracking_uri):
    (folder0, net0), (folder1, net1) = checkpoints
    run_id = _run(tracking_uri)
    first = register(folder0, tracking_uri, run_id)
    second = register(folder1, tracking_uri, run_id)
    third = register(folder0, tracking_uri, run_id, alias=None, ema=True)
    assert (first, second, third) == (f"models:/{NAME}/1", f"models:/{NAME}/2", f"models:/{NAME}/3")
    champion, info = load_restorer(f"models:/{NAME}@champion", tracking_uri=tracking_uri)
    assert info["version"] == 2 and info["model_uri"] == second and info["requested_uri"].endswith("@champion")
    assert _same_outputs(champion, net1) and not _same_outputs(champion, net0)
    assert _same_outputs(load_restorer(first, tracking_uri=tracking_uri)[0], net0)  # old versions stay
    assert resolve_model(f"models:/{NAME}/latest", tracking_uri=tracking_uri).version == 3
    with_ema, ema_info = load_restorer(third, tracking_uri=tracking_uri)  # no alias moved, EMA weights
    assert _same_outputs(with_ema, _ema(folder0)) and not _same_outputs(with_ema, net0)
    assert ema_info["card"]["weights"] == "ema"
    assert load_restorer(f"models:/{NAME}@champion", tracking_uri=tracking_uri)[1]["version"] == 2
    from mlflow import MlflowClient

    assert MlflowClient(tracking_uri).get_model_version(NAME, "3").tags["fsr_weights"] == "ema"


def test_missing_models_and_bad_inputs_are_named(checkpoints, tracking_uri):
    (folder, _), _ = checkpoints
    run_id = _run(tracking_uri)
    register(folder, tracking_uri, run_id)
    for uri in (f"models:/{NAME}@nobody", f"models:/{NAME}/9", "models:/no_such_model@champion",
                "models:/no_such_model/1", "models:/m-0123456789abcdef"):
        with pytest.raises(ModelNotFoundError, match=uri.replace("/", ".")):
            load_restorer(uri, tracking_uri=tracking_uri)
    with pytest.raises(ValueError, match="runs:/abc/model"):
        load_restorer("runs:/abc/model", tracking_uri=tracking_uri)
    with pytest.raises(KeyError, match="no restorer 'missing'"):
        register(folder, tracking_uri, run_id, restorer="missing", alias=None)
    with pytest.raises(FileNotFoundError, match=r"EMA weights for 'l2h'"):  # checkpoint 1 keeps no EMA
        register(checkpoints[1][0], tracking_uri, run_id, alias=None, ema=True)
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        register(folder + "-nope", tracking_uri, run_id, alias=None)


def test_checkpoint_and_artifacts_on_s3(checkpoints, tracking_uri, s3_bucket):
    import boto3

    (folder, original), _ = checkpoints
    remote = f"{s3_bucket}/checkpoints/ckpt0"  # e.g. where Ray Train left it
    for name in ("networks.json", "restorers.json", "train_state.json", "weights/l2h.pt", "weights/pre.pt"):
        storage.upload_file(os.path.join(folder, name), f"{remote}/{name}")
    run_id = _run(tracking_uri, artifact_location=f"{s3_bucket}/mlflow")
    uri = register(remote, tracking_uri, run_id, alias="challenger")
    bucket = s3_bucket[len("s3://"):]
    keys = [obj["Key"] for obj in boto3.client("s3").list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(key.startswith("mlflow/models/m-") and key.endswith("/restorer/weights/l2h.pt") for key in keys), keys
    assert resolve_model(uri, tracking_uri=tracking_uri).download_uri.startswith(s3_bucket)
    loaded, info = load_restorer(f"models:/{NAME}@challenger", tracking_uri=tracking_uri)
    assert info["version"] == 1 and _same_outputs(loaded, original)
    assert info["card"]["training"]["checkpoint"] == remote
