"""Restorers in the MLflow Model Registry: register a checkpoint's restorer, resolve and load it back.

A registered model is a **restorer bundle** (:mod:`fsr_core.restore.restorer`: ``card.json``,
``networks.json``, ``weights/*.pt``) logged as an MLflow LoggedModel ``models:/m-<id>`` linked to
the run that produced it, with a ``python_function`` flavor whose ``loader_module`` is this module
(MLflow's second pyfunc workflow: no ``python_model.pkl``, no pickled code, no code from the
artifact is run)::

    MLmodel        flavors: python_function {loader_module: pipelines.model_registry, data: data/restorer},
                   fsr_restorer {card, bundle: data/restorer}; signature uint8 [-1,-1,-1,3] -> uint8 [-1,-1,-1,3]
    data/restorer/ the bundle

:func:`load_restorer` rebuilds the restorer from the bundle (networks through
:func:`fsr_core.networks.build_network`, weights with ``weights_only=True``);
``mlflow.pyfunc.load_model(uri).predict(images)`` does the same through :func:`_load_pyfunc` and
maps uint8 ``[N,s,s,3]`` to uint8 ``[N,s*scale,s*scale,3]`` (``model_config={"device": "cuda"}``
at load time moves it to a GPU; a restorer whose card names per-face conditions declares them as
list-of-string params of its signature: ``predict(images, params={"identity": [...]})``). Both need
the ``fsr`` package installed, which the model's
requirements name. The name ``bicubic`` is the built-in baseline restorer: no registry needed.

Model URIs accepted by :func:`resolve_model` / :func:`load_restorer`:
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
from typing import Any, Mapping

import numpy as np

__all__ = [
    "AliasNotFoundError",
    "ModelNotFoundError",
    "ModelRef",
    "bicubic_scale",
    "is_bicubic",
    "load_restorer",
    "register_restorer",
    "resolve_model",
]

BUNDLE_FOLDER = "restorer"
FLAVOR = "fsr_restorer"
MODEL_TYPE = "fsr-restorer"


class ModelNotFoundError(LookupError):
    """A model URI names no registered version, alias or logged model; the message names the URI."""


class AliasNotFoundError(ModelNotFoundError):
    """``models:/NAME@ALIAS`` where the registered model has no such alias (or no such name)."""


_BICUBIC = re.compile(r"^bicubic(?::x(?P<scale>[1-9][0-9]*))?$")


def bicubic_scale(model: Any) -> int | None:
    """The scale of the built-in bicubic restorer a URI names (``bicubic`` is x8, ``bicubic:x4``
    x4), or None when it names another model."""
    if isinstance(model, ModelRef):
        model = model.uri
    match = _BICUBIC.match(model) if isinstance(model, str) else None
    return None if match is None else int(match.group("scale") or 8)


def is_bicubic(model: Any) -> bool:
    """Whether ``model`` (a URI or a :class:`ModelRef`) names the built-in bicubic restorer."""
    return bicubic_scale(model) is not None


# ---------------------------------------------------------------------------- the pyfunc flavor
class RestorerPyfunc:
    """What ``mlflow.pyfunc.load_model`` returns (through :func:`_load_pyfunc`): ``predict(images)``
    maps uint8 ``[N,s,s,3]`` RGB to uint8 ``[N,s*scale,s*scale,3]``; ``params`` carries the per-face
    conditions the card names (``{"identity": N names}``)."""

    def __init__(self, restorer, *, batch_size: int = 64) -> None:
        self.restorer = restorer
        self.batch_size = batch_size

    def predict(self, model_input, params: dict | None = None) -> np.ndarray:
        images = np.asarray(model_input)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 [N,H,W,3] RGB images, got {images.dtype} {images.shape}")
        from fsr_core.restore.restorer import CONDITIONS

        conditions = {name: list(params[name]) for name in CONDITIONS if params and params.get(name) is not None}
        return self.restorer.restore(images, batch_size=self.batch_size, conditions=conditions)


def _load_pyfunc(data_path: str, model_config: Mapping[str, Any] | None = None) -> RestorerPyfunc:
    """MLflow's pyfunc entry point (``loader_module``): the bundle at ``data_path``."""
    from fsr_core.restore.restorer import load_bundle

    config = dict(model_config or {})
    restorer = load_bundle(data_path, device=config.get("device", "cpu"))
    return RestorerPyfunc(restorer, batch_size=int(config.get("batch_size", 64)))


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


def _signature(conditions: tuple[str, ...] = ()):
    """uint8 images in and out; the card's per-face conditions as list-of-string params (MLflow passes
    ``predict`` only the params its signature declares)."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec
    from mlflow.types.schema import ParamSchema, ParamSpec

    images = Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))])
    params = ParamSchema([ParamSpec(name, "string", [], (-1,)) for name in conditions]) if conditions else None
    return ModelSignature(inputs=images, outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
                          params=params)


def _download_checkpoint(checkpoint_dir: str, local: str) -> str:
    """The files of a checkpoint folder (local or ``s3://``) that exporting a restorer reads."""
    from fsr_core import storage

    if not storage.is_s3(checkpoint_dir):
        if not os.path.isfile(os.path.join(checkpoint_dir, "networks.json")):
            raise FileNotFoundError(f"not a checkpoint folder (no networks.json): {checkpoint_dir}")
        return checkpoint_dir
    infos = storage.list_files(checkpoint_dir)
    if not any(info.uri.endswith("/networks.json") for info in infos):
        raise FileNotFoundError(f"not a checkpoint folder (no networks.json): {checkpoint_dir}")
    for info in infos:
        rel = info.uri[len(checkpoint_dir.rstrip("/")) + 1:]
        if rel.endswith("optimizers.pt") or rel.endswith("objective_state.pt"):
            continue  # not part of a restorer
        storage.download_file(info.uri, os.path.join(local, *rel.split("/")))
    return local


def register_restorer(
    *,
    checkpoint_dir: str,
    restorer: str,
    registered_name: str,
    alias: str | None,
    tracking_uri: str,
    run_id: str,
    ema: bool = False,
    alignment: str = "ffhq",
    grey_inputs: str = "grey",
) -> str:
    """Export restorer ``restorer`` of a checkpoint folder (local or ``s3://``) as a bundle, log it
    as a model of run ``run_id``, register it as a new version of ``registered_name`` (created if
    needed) and point ``alias`` at it.

    ``ema=True`` takes the EMA weights. The version is tagged ``fsr_source_run_id``,
    ``fsr_restorer``, ``fsr_kind``, ``fsr_weights`` (``ema`` or ``raw``), ``fsr_checkpoint`` and
    ``fsr_model_id`` (its LoggedModel). Returns ``models:/<registered_name>/<version>``.
    """
    from fsr_core.restore.restorer import export_restorer, load_bundle

    with tempfile.TemporaryDirectory(prefix="fsr-model-") as tmp:
        local = _download_checkpoint(checkpoint_dir, os.path.join(tmp, "checkpoint"))
        bundle = os.path.join(tmp, BUNDLE_FOLDER)
        training = {"checkpoint": checkpoint_dir if "://" in checkpoint_dir else os.path.abspath(checkpoint_dir)}
        card = export_restorer(local, restorer, bundle, ema=ema, alignment=alignment, grey_inputs=grey_inputs,
                               training=training)
        load_bundle(bundle)  # fail here, not at load time
        return _log_and_register(bundle=bundle, card=card, checkpoint_dir=training["checkpoint"],
                                 registered_name=registered_name, alias=alias, tracking_uri=tracking_uri,
                                 run_id=run_id)


def _log_and_register(*, bundle: str, card, checkpoint_dir: str, registered_name: str, alias: str | None,
                      tracking_uri: str, run_id: str) -> str:
    import mlflow.pyfunc
    from mlflow.entities import LoggedModelOutput
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    client, tracking_uri = _client(tracking_uri)
    run = client.get_run(run_id)
    tags = {
        "fsr_source_run_id": run_id,
        "fsr_restorer": card.name,
        "fsr_kind": card.kind,
        "fsr_weights": card.weights,
        "fsr_checkpoint": checkpoint_dir,
        "fsr_input_size": str(card.input_size),
        "fsr_scale": str(card.scale),
        "fsr_alignment": card.alignment,
    }
    logged = client.create_logged_model(
        experiment_id=run.info.experiment_id,
        name=card.name,
        source_run_id=run_id,
        tags=tags,
        params={key: json.dumps(value)[:6000] for key, value in card.to_dict().items() if key != "training"},
        model_type=MODEL_TYPE,
    )
    try:
        with tempfile.TemporaryDirectory(prefix="fsr-model-") as tmp:
            local = os.path.join(tmp, "model")
            model = Model(artifact_path=logged.artifact_location, run_id=run_id, model_uuid=logged.model_id,
                          model_id=logged.model_id, signature=_signature(card.conditions),
                          metadata={"fsr_restorer": card.name, "fsr_kind": card.kind, "scale": card.scale,
                                    "input_size": card.input_size})
            mlflow.pyfunc.save_model(path=local, loader_module=__name__, data_path=bundle, mlflow_model=model,
                                     pip_requirements=_requirements(),
                                     model_config={"device": "cpu", "batch_size": 64})
            model.add_flavor(FLAVOR, card=card.to_dict(), bundle=model.flavors["python_function"]["data"])
            model.save(os.path.join(local, "MLmodel"))
            client.log_model_artifacts(logged.model_id, local)
        client.finalize_logged_model(logged.model_id, "READY")
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    except BaseException:
        client.finalize_logged_model(logged.model_id, "FAILED")
        raise

    try:
        client.create_registered_model(registered_name, description="fsr restorer (card + networks + weights)")
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
    artifact location); ``kind`` the restorer's kind (``feed_forward``, ``latent_search``, or
    ``interpolation`` for the built-in bicubic restorer, whose URI is ``bicubic`` or ``bicubic:x<scale>``);
    ``input_size``, ``scale`` and ``alignment`` what its card says (from the version's tags).
    """

    requested: str
    uri: str
    name: str
    version: int | None
    model_id: str
    source_run_id: str | None
    download_uri: str
    kind: str = "feed_forward"
    input_size: int | None = None
    scale: int | None = None
    alignment: str | None = None


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

    scale = bicubic_scale(model_uri)
    if scale is not None:
        return ModelRef(model_uri, model_uri, "bicubic", None, "", None, "", kind="interpolation",
                        input_size=_bicubic_input_size(scale), scale=scale)
    match = _URI.match(model_uri or "")
    if not match:
        raise ValueError(
            f"unsupported model URI {model_uri!r}: use models:/NAME@ALIAS, models:/NAME/VERSION, models:/m-<id> "
            "or bicubic"
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
                            logged.source_run_id, logged.artifact_location, **_card_tags(logged.tags or {}))
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
                    model_id, version.run_id, download_uri, **_card_tags(version.tags or {}))


def _card_tags(tags: Mapping[str, str]) -> dict[str, Any]:
    def number(key: str) -> int | None:
        return int(tags[key]) if str(tags.get(key, "")).isdigit() else None

    return {"kind": tags.get("fsr_kind", "feed_forward"), "input_size": number("fsr_input_size"),
            "scale": number("fsr_scale"), "alignment": tags.get("fsr_alignment")}


def _bicubic_input_size(scale: int) -> int:
    """The bicubic restorer's nominal input size: the LR side of a 128 px face at its scale."""
    return max(1, 128 // scale)


def _model_id_from_source(source: str | None) -> str | None:
    if source and source.startswith("models:/m-"):
        return source[len("models:/"):].strip("/")
    return None


def load_restorer(model: "str | ModelRef", *, tracking_uri: str | None = None, device: str = "cpu"):
    """Load a restorer: ``bicubic`` / ``bicubic:x<scale>`` (the built-in baseline), a model
    URI (resolved with :func:`resolve_model`, which raises :class:`ModelNotFoundError` naming it
    when it names nothing) or an already resolved :class:`ModelRef` (then only the model's files
    are read, the tracking store is not asked: what batch jobs hand their actors).

    Returns ``(restorer, info)``; ``info`` has ``name``, ``version`` (the concrete version an alias
    pointed to when loading), ``model_uri`` (concrete), ``requested_uri``, ``model_id``,
    ``run_id``, ``card`` (dict), ``kind``, ``scale`` and ``input_size``.
    """
    import mlflow
    import mlflow.artifacts
    from mlflow.models import Model

    from fsr_core.restore.restorer import BicubicRestorer, load_bundle

    scale = bicubic_scale(model)
    if scale is not None:
        restorer = BicubicRestorer(scale=scale, input_size=_bicubic_input_size(scale))
        uri = model.uri if isinstance(model, ModelRef) else model
        return restorer, _info(restorer, name="bicubic", version=None, uri=uri, requested=uri, model_id=None,
                               run_id=None)
    ref = model if isinstance(model, ModelRef) else resolve_model(model, tracking_uri=tracking_uri)
    tracking_uri = tracking_uri or mlflow.get_tracking_uri()
    with tempfile.TemporaryDirectory(prefix="fsr-load-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=ref.download_uri, dst_path=tmp, tracking_uri=tracking_uri, registry_uri=tracking_uri
        )
        flavors = Model.load(local).flavors
        if FLAVOR not in flavors:
            raise ValueError(f"{ref.requested} ({ref.uri}) is not an fsr restorer (no {FLAVOR} flavor)")
        restorer = load_bundle(os.path.join(local, flavors[FLAVOR]["bundle"]), device=device)
    return restorer, _info(restorer, name=ref.name, version=ref.version, uri=ref.uri, requested=ref.requested,
                           model_id=ref.model_id, run_id=ref.source_run_id)


def _info(restorer, *, name: str, version: int | None, uri: str, requested: str, model_id: str | None,
          run_id: str | None) -> dict[str, Any]:
    card = restorer.card
    return {"name": name, "version": version, "model_uri": uri, "requested_uri": requested, "model_id": model_id,
            "run_id": run_id, "card": card.to_dict(), "kind": card.kind, "scale": card.scale,
            "input_size": card.input_size}
