"""Finished networks in the MLflow Model Registry: register a checkpoint's network, load it back.

A registered network is an MLflow **pyfunc** model (a LoggedModel ``models:/m-<id>`` linked to
the run that produced it) holding no pickled code and no exported graph::

    MLmodel                  flavor python_function; model_config {"network", "device", "batch_size"}
    python_model.pkl         a reference to :class:`NetworkModel` (class pickled by name, no state)
    artifacts/networks.json  {name: {"class": ..., "kwargs": {...}}} of the one network
    artifacts/<name>.pt      its state_dict (loaded with ``weights_only=True``)
    input_example.json ...   uint8 images; signature uint8 [-1,-1,-1,3] -> uint8 [-1,-1,-1,3]

:func:`load_network` rebuilds the ``nn.Module`` from the two artifacts through
:data:`fsr_core.networks.NETWORKS`; ``mlflow.pyfunc.load_model(uri).predict(images)`` does the
same inside :meth:`NetworkModel.load_context` and maps uint8 ``[N,H,W,3]`` to uint8
``[N,sH,sW,3]`` (``model_config={"device": "cuda"}`` at load time moves it to a GPU). Both need
the ``fsr`` package installed, which the model's requirements name.

Model URIs accepted by :func:`resolve_model` / :func:`load_network`:
``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/NAME/latest``, ``models:/m-<id>``.
Everything goes through an explicit ``MlflowClient(tracking_uri)``; nothing here sets MLflow's
process-global tracking URI or starts a fluent run (a stage's run is shared with the runner).
For the same reason a model version's ``source`` is the LoggedModel's artifact location rather
than ``models:/m-<id>`` (MLflow 3.17's SQL registry resolves the latter through the global
tracking URI); the version's ``fsr_model_id`` tag names the LoggedModel.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import numpy as np
from torch import nn

import mlflow.pyfunc

__all__ = [
    "ModelNotFoundError",
    "AliasNotFoundError",
    "ModelRef",
    "NetworkModel",
    "build_network",
    "load_network",
    "register_network",
    "resolve_model",
]

NETWORKS_ARTIFACT = "networks"
WEIGHTS_ARTIFACT = "weights"
MODEL_TYPE = "fsr-network"
EXAMPLE_SIZE = 16


class ModelNotFoundError(LookupError):
    """A model URI names no registered version, alias or logged model; the message names the URI."""


class AliasNotFoundError(ModelNotFoundError):
    """``models:/NAME@ALIAS`` where the registered model has no such alias (or no such name)."""


# ---------------------------------------------------------------------------- the pyfunc model
def build_network(networks_json: str, weights: str, *, name: str, device: str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild network ``name`` from a ``networks.json`` and its weights file; eval mode, on ``device``.

    Returns ``(network, spec)`` with ``spec = {"class": ..., "kwargs": {...}}``.
    """
    import torch

    from fsr_core.networks import NETWORKS

    with open(networks_json) as fh:
        specs = json.load(fh)
    if name not in specs:
        raise KeyError(f"{networks_json} has no network {name!r}; it has {sorted(specs)}")
    spec = specs[name]
    cls = NETWORKS.get(spec["class"])
    if cls is None:
        raise KeyError(f"unknown network class {spec['class']!r}; known: {sorted(NETWORKS)}")
    network = cls(**spec["kwargs"])
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return network.to(device).eval(), spec


class NetworkModel(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper of one fsr network: uint8 ``[N,H,W,3]`` RGB -> uint8 ``[N,sH,sW,3]`` RGB.

    Holds no state when pickled: :meth:`load_context` rebuilds the network from the model's
    ``networks`` and ``weights`` artifacts; ``model_config`` gives ``network`` (its name),
    ``device`` and ``batch_size``.
    """

    def load_context(self, context) -> None:
        config = dict(context.model_config or {})
        self.network, self.spec = build_network(
            context.artifacts[NETWORKS_ARTIFACT],
            context.artifacts[WEIGHTS_ARTIFACT],
            name=config["network"],
            device=config.get("device", "cpu"),
        )
        self.batch_size = int(config.get("batch_size", 64))

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        from fsr_core.restore.batch import super_resolve

        images = np.asarray(model_input)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 [N,H,W,3] RGB images, got {images.dtype} {images.shape}")
        return super_resolve(self.network, images, batch_size=self.batch_size)


# ---------------------------------------------------------------------------- registering
def _client(tracking_uri: str | None):
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or mlflow.get_tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri), uri


def _requirements() -> list[str]:
    out = []
    for package in ("fsr", "torch", "numpy", "opencv-python-headless"):
        try:
            out.append(f"{package}=={metadata.version(package).split('+')[0]}")  # no local tags (+cpu)
        except metadata.PackageNotFoundError:
            out.append(package)
    return out


def _signature():
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    images = Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))])
    return ModelSignature(inputs=images, outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]))


def register_network(
    *,
    checkpoint_dir: str,
    network: str,
    registered_name: str,
    alias: str | None,
    tracking_uri: str,
    run_id: str,
    ema: bool = False,
    example_size: int = EXAMPLE_SIZE,
) -> str:
    """Log network ``network`` of a checkpoint folder (local or ``s3://``) as a pyfunc model of run
    ``run_id``, register it as a new version of ``registered_name`` (created if needed) and point
    ``alias`` at it.

    ``ema=True`` takes the EMA weights (``weights/<network>.ema.pt``). The model version is tagged
    ``fsr_source_run_id``, ``fsr_network``, ``fsr_network_class``, ``fsr_weights`` (``ema`` or
    ``raw``), ``fsr_checkpoint`` and ``fsr_model_id`` (its LoggedModel). ``example_size`` is the
    side of the uint8 input example. Returns ``models:/<registered_name>/<version>``.
    """
    from fsr_core import storage

    with tempfile.TemporaryDirectory(prefix="fsr-model-") as tmp:
        networks_json = os.path.join(tmp, "networks.json")
        weights = os.path.join(tmp, f"{network}.pt")
        try:
            storage.download_file(storage.join(checkpoint_dir, "networks.json"), networks_json)
        except FileNotFoundError:
            raise FileNotFoundError(f"not a checkpoint folder (no networks.json): {checkpoint_dir}") from None
        with open(networks_json) as fh:
            specs = json.load(fh)
        if network not in specs:
            raise KeyError(f"checkpoint {checkpoint_dir} has no network {network!r}; it has {sorted(specs)}")
        spec = specs[network]
        with open(networks_json, "w") as fh:  # the model carries only its own network
            json.dump({network: spec}, fh, indent=2, sort_keys=True)
        try:
            source = storage.join(checkpoint_dir, "weights", f"{network}{'.ema' if ema else ''}.pt")
            storage.download_file(source, weights)
        except FileNotFoundError:
            raise FileNotFoundError(f"checkpoint {checkpoint_dir} has no weights file {source}") from None
        built, _ = build_network(networks_json, weights, name=network)  # fail here, not at load time
        return _log_and_register(
            networks_json=networks_json, weights=weights, network=network, spec=spec,
            scale=getattr(built, "scale", None), checkpoint_dir=checkpoint_dir, registered_name=registered_name,
            alias=alias, tracking_uri=tracking_uri, run_id=run_id, example_size=example_size, ema=ema,
        )


def _log_and_register(
    *, networks_json: str, weights: str, network: str, spec: dict, scale: int | None, checkpoint_dir: str,
    registered_name: str, alias: str | None, tracking_uri: str, run_id: str, example_size: int, ema: bool,
) -> str:
    from mlflow.entities import LoggedModelOutput
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    client, tracking_uri = _client(tracking_uri)
    run = client.get_run(run_id)
    tags = {
        "fsr_source_run_id": run_id,
        "fsr_network": network,
        "fsr_network_class": spec["class"],
        "fsr_weights": "ema" if ema else "raw",
        "fsr_checkpoint": checkpoint_dir if "://" in checkpoint_dir else os.path.abspath(checkpoint_dir),
    }
    logged = client.create_logged_model(
        experiment_id=run.info.experiment_id,
        name=network,
        source_run_id=run_id,
        tags=tags,
        params={f"kwargs.{key}": json.dumps(value)[:6000] for key, value in spec["kwargs"].items()},
        model_type=MODEL_TYPE,
    )
    try:
        with tempfile.TemporaryDirectory(prefix="fsr-model-") as tmp:
            local = os.path.join(tmp, "model")
            mlflow.pyfunc.save_model(
                path=local,
                python_model=NetworkModel(),
                artifacts={NETWORKS_ARTIFACT: networks_json, WEIGHTS_ARTIFACT: weights},
                model_config={"network": network, "device": "cpu", "batch_size": 64},
                signature=_signature(),
                input_example=np.zeros((1, example_size, example_size, 3), np.uint8),
                pip_requirements=_requirements(),
                metadata={"fsr_network": network, "fsr_network_class": spec["class"], "scale": scale},
                mlflow_model=Model(
                    artifact_path=logged.artifact_location,
                    run_id=run_id,
                    model_uuid=logged.model_id,
                    model_id=logged.model_id,
                ),
            )
            client.log_model_artifacts(logged.model_id, local)
        client.finalize_logged_model(logged.model_id, "READY")
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    except BaseException:
        client.finalize_logged_model(logged.model_id, "FAILED")
        raise

    try:
        client.create_registered_model(registered_name, description="fsr network (pyfunc: uint8 images in and out)")
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    # source: the artifact location, not "models:/m-<id>": with a SQL store MLflow 3.17 resolves
    # the latter through the process-global tracking URI, i.e. possibly in another database.
    version = client.create_model_version(
        registered_name,
        source=logged.artifact_location,
        run_id=run_id,
        tags={**tags, "fsr_model_id": logged.model_id},
        model_id=logged.model_id,
    )
    if alias:
        client.set_registered_model_alias(registered_name, alias, version.version)
    return f"models:/{registered_name}/{version.version}"


# ---------------------------------------------------------------------------- resolving, loading
@dataclass(frozen=True)
class ModelRef:
    """A model URI resolved to one immutable model.

    ``uri`` is the concrete URI (``models:/NAME/VERSION``, or ``models:/m-<id>`` for a logged model
    that was asked for by id); ``requested`` the URI as given (e.g. with an alias). ``name`` and
    ``version`` are the registered name and version (for a logged model asked for by id: its
    logged name and ``None``); ``download_uri`` where its files are (a ``file:``/``s3:``/...
    artifact location).
    """

    requested: str
    uri: str
    name: str
    version: int | None
    model_id: str
    source_run_id: str | None
    download_uri: str


_URI = re.compile(r"^models:/(?P<body>[^?#]+?)/?$")


def _not_found(model_uri: str, tracking_uri: str, exc: Exception) -> ModelNotFoundError:
    detail = getattr(exc, "message", None) or str(exc)
    return ModelNotFoundError(f"model {model_uri!r} not found (tracking URI {tracking_uri}): {detail}")


def resolve_model(model_uri: str, *, tracking_uri: str | None = None) -> ModelRef:
    """Resolve a model URI (alias, version, ``latest`` or logged-model id) to one model.

    Raises ``ValueError`` for a URI that is not ``models:/...`` and :class:`ModelNotFoundError`
    (naming the URI) when nothing is there.
    """
    from mlflow.exceptions import MlflowException

    match = _URI.match(model_uri or "")
    if not match:
        raise ValueError(
            f"unsupported model URI {model_uri!r}: use models:/NAME@ALIAS, models:/NAME/VERSION or models:/m-<id>"
        )
    body = match.group("body")
    client, tracking_uri = _client(tracking_uri)
    try:
        if "@" in body:
            name, alias = body.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        elif "/" in body:
            name, which = body.rsplit("/", 1)
            if which == "latest":
                versions = client.search_model_versions(f"name = '{name}'")
                if not versions:
                    raise ModelNotFoundError(f"model {model_uri!r} not found (tracking URI {tracking_uri}): "
                                             "no versions")
                version = max(versions, key=lambda v: int(v.version))
            elif which.isdigit():
                version = client.get_model_version(name, which)
            else:
                raise ValueError(f"model URI {model_uri!r}: version must be a number, 'latest' or '@alias'")
        else:
            logged = client.get_logged_model(body)
            return ModelRef(model_uri, f"models:/{logged.model_id}", logged.name, None, logged.model_id,
                            logged.source_run_id, logged.artifact_location)
        download_uri = client.get_model_version_download_uri(version.name, version.version)
    except MlflowException as exc:
        missing = exc.error_code == "RESOURCE_DOES_NOT_EXIST" or (
            exc.error_code == "INVALID_PARAMETER_VALUE" and "not found" in exc.message  # an unknown alias
        )
        if missing:
            error = _not_found(model_uri, tracking_uri, exc)
            if "@" in body:
                error = AliasNotFoundError(str(error))
            raise error from exc
        raise
    model_id = version.model_id or _model_id_from_source(version.source) or version.tags.get("fsr_model_id")
    if not model_id:
        raise ModelNotFoundError(
            f"model {model_uri!r} (version {version.version}) has no logged model: {version.source}"
        )
    return ModelRef(model_uri, f"models:/{version.name}/{version.version}", version.name, int(version.version),
                    model_id, version.run_id, download_uri)


def _model_id_from_source(source: str | None) -> str | None:
    if source and source.startswith("models:/m-"):
        return source[len("models:/"):].strip("/")
    return None


def load_network(
    model_uri: str | ModelRef, *, tracking_uri: str | None = None, device: str = "cpu"
) -> tuple[nn.Module, dict]:
    """Load a registered (or logged) fsr network as an eval-mode ``nn.Module`` on ``device``.

    ``model_uri`` is a model URI (resolved with :func:`resolve_model`, which raises
    :class:`ModelNotFoundError` naming it when it names nothing) or an already resolved
    :class:`ModelRef`: then only the model's files are read, the tracking store is not asked
    (what batch jobs hand their actors: one resolution, no database traffic per actor).

    Returns ``(network, info)``; ``info`` has ``name``, ``version`` (the concrete version an alias
    pointed to when loading), ``model_uri`` (concrete), ``requested_uri``, ``model_id``,
    ``run_id``, ``network``, ``class``, ``kwargs`` and ``scale``.
    """
    import mlflow
    import mlflow.artifacts
    from mlflow.models import Model

    ref = model_uri if isinstance(model_uri, ModelRef) else resolve_model(model_uri, tracking_uri=tracking_uri)
    tracking_uri = tracking_uri or mlflow.get_tracking_uri()
    with tempfile.TemporaryDirectory(prefix="fsr-load-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=ref.download_uri, dst_path=tmp, tracking_uri=tracking_uri, registry_uri=tracking_uri
        )
        flavor = Model.load(local).flavors.get("python_function", {})
        artifacts = flavor.get("artifacts") or {}
        config = flavor.get("config") or {}  # pyfunc stores model_config under "config"
        if NETWORKS_ARTIFACT not in artifacts or WEIGHTS_ARTIFACT not in artifacts or "network" not in config:
            raise ValueError(f"{model_uri} ({ref.uri}) is not an fsr network model (no networks/weights artifacts)")
        network, spec = build_network(
            os.path.join(local, artifacts[NETWORKS_ARTIFACT]["path"]),
            os.path.join(local, artifacts[WEIGHTS_ARTIFACT]["path"]),
            name=config["network"],
            device=device,
        )
    info: dict[str, Any] = {
        "name": ref.name,
        "version": ref.version,
        "model_uri": ref.uri,
        "requested_uri": ref.requested,
        "model_id": ref.model_id,
        "run_id": ref.source_run_id,
        "network": config["network"],
        "class": spec["class"],
        "kwargs": spec["kwargs"],
        "scale": getattr(network, "scale", None),
    }
    return network, info
