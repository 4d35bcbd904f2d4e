"""Configuration: the YAML in ``conf/`` parsed into typed objects, in this one module.

Files (``--conf-dir``, default ``./conf``):

- ``base.yaml``: ``runtime:`` (work root, Ray address) and ``tracking:`` (MLflow);
- ``catalog.yaml``: ``catalog:``, named data and model locations (path or ``s3://``);
- ``pipelines/<name>.yaml``: ``pipeline:``, its stages with their ``params``;
- ``experiments/<name>.yaml`` (optional, ``--experiment``): overrides, in the same
  shape as command-line overrides.

Overrides ``section.key=value`` (the value is read as YAML: ``3``, ``true``,
``[1, 2]``) address ``runtime``, ``tracking``, ``catalog`` or a stage by its
name (``train.batch_size=8`` sets that stage's parameter). Unknown keys, wrong
types, unknown stages and invalid pipelines fail here, before any work starts,
with a :class:`ConfigError` naming the key and the file (or override) it came from.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipelines.stage import Stage, StageParams

__all__ = [
    "ConfigError",
    "RuntimeConfig",
    "TrackingConfig",
    "CatalogEntry",
    "StageSpec",
    "PipelineSpec",
    "ResolvedConfig",
    "load_config",
    "parse_override",
    "resolve_pipeline_path",
]

TOP_SECTIONS = ("runtime", "tracking", "catalog")
_NAME_PATTERN = r"^[a-z][a-z0-9_]*$"


class ConfigError(ValueError):
    """A configuration or pipeline is invalid; the message says what and where."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RuntimeConfig(_Strict):
    """Where work happens."""

    work_root: str = Field("fsr-work", description="root of stage outputs: a local folder or s3://bucket/prefix")
    ray_address: str | None = Field(None, description="None: start a local Ray; 'auto' or ray://...: connect")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray (None: all)")
    stage_max_retries: int = Field(0, ge=0, description="Ray retries of a stage task that crashed")
    max_parallel_stages: int | None = Field(
        None, ge=1, description="stages running at once (None: all that are ready); 1 on very small machines"
    )
    carry_env: list[str] = Field(
        default_factory=list,
        description="names of more environment variables to give a cluster's workers (besides the MLflow, S3 "
                    "and Ray settings fsr carries); never secrets: those reach the nodes by the cluster's own means")
    shared_filesystems: list[str] = Field(
        default_factory=list,
        description="folders mounted at the same path on every node of a cluster (NFS, EFS, a host path when all "
                    "nodes run on one machine): with a cluster, local paths are accepted only under these")


    @field_validator("carry_env")
    @classmethod
    def _no_secrets(cls, names: list[str]) -> list[str]:
        from pipelines.ray_runtime import check_not_secret

        return [check_not_secret(name) for name in names]


class TrackingConfig(_Strict):
    """MLflow."""

    uri: str | None = Field(None, description="tracking URI; None: sqlite file <work_root>/mlflow.db")
    experiment: str = "fsr"
    artifact_location: str | None = Field(None, description="artifact root of a new experiment (path or s3://)")


class CatalogEntry(_Strict):
    """A named data or model location."""

    uri: str
    kind: Literal["shards", "images", "videos", "dataset_root", "model", "file"] = "dataset_root"
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    description: str = ""


class StageSpec(_Strict):
    """One stage of a pipeline: an instance of a stage kind."""

    name: str = Field(pattern=_NAME_PATTERN)
    uses: str
    inputs: dict[str, str] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)


class PipelineSpec(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    description: str = ""
    stages: list[StageSpec] = Field(min_length=1)


class _BaseFile(_Strict):
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)


class _CatalogFile(_Strict):
    catalog: dict[str, CatalogEntry] = Field(default_factory=dict)


class _PipelineFile(_Strict):
    pipeline: PipelineSpec


@dataclass
class ResolvedConfig:
    """Everything a pipeline run needs, validated."""

    runtime: RuntimeConfig
    tracking: TrackingConfig
    catalog: dict[str, CatalogEntry]
    pipeline: PipelineSpec
    stage_params: dict[str, StageParams]
    order: list[str]
    sources: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)

    def stage(self, name: str) -> StageSpec:
        return next(spec for spec in self.pipeline.stages if spec.name == name)

    def tracking_uri(self) -> str:
        if self.tracking.uri:
            return self.tracking.uri
        if "://" in self.runtime.work_root:
            raise ConfigError("tracking.uri must be set when runtime.work_root is not a local folder")
        return "sqlite:///" + os.path.abspath(os.path.join(self.runtime.work_root, "mlflow.db"))

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration, as logged with every run."""
        stages = []
        for spec in self.pipeline.stages:
            stages.append(
                {
                    "name": spec.name,
                    "uses": spec.uses,
                    "inputs": dict(spec.inputs),
                    "params": self.stage_params[spec.name].model_dump(mode="json"),
                }
            )
        return {
            "runtime": self.runtime.model_dump(mode="json"),
            "tracking": self.tracking.model_dump(mode="json"),
            "catalog": {k: v.model_dump(mode="json") for k, v in self.catalog.items()},
            "pipeline": {"name": self.pipeline.name, "description": self.pipeline.description, "stages": stages},
            "sources": list(self.sources),
            "overrides": list(self.overrides),
        }


# ---------------------------------------------------------------------------- loading
def _read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def _format_loc(loc: tuple, stages: list | None = None) -> str:
    parts: list[str] = []
    for i, item in enumerate(loc):
        if isinstance(item, int):
            label = f"[{item}]"
            if stages is not None and i > 0 and loc[i - 1] == "stages" and item < len(stages):
                name = stages[item].get("name") if isinstance(stages[item], dict) else None
                if name:
                    label += f" ({name})"
            parts.append(label)
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "<top level>"


def _validation_message(origin: str, exc: ValidationError | list[dict], *, prefix: str = "", stages=None) -> str:
    errors = exc.errors() if isinstance(exc, ValidationError) else exc
    lines = []
    for err in errors:
        loc = _format_loc(tuple(err["loc"]), stages)
        where = f"{prefix}{loc}" if prefix else loc
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        got = "" if err["type"] in ("missing", "extra_forbidden") else f" (got {err.get('input')!r})"
        lines.append(f"{origin}: {where}: {msg}{got}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b.c=value"`` -> ``(["a", "b", "c"], yaml-parsed value)``."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if len(path) < 2 or not all(path):
        raise ConfigError(f"override {text!r}: expected section.key=value, e.g. runtime.num_cpus=2")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {exc}") from exc
    return path, value


def _flatten_overlay(data: Mapping, prefix: list[str] | None = None) -> list[tuple[list[str], Any]]:
    """An experiment file ``{stage: {key: value}}`` -> ``[([stage, key], value)]``; leaves are non-dicts."""
    out: list[tuple[list[str], Any]] = []
    for key, value in data.items():
        path = (prefix or []) + [str(key)]
        if isinstance(value, Mapping) and value:
            out.extend(_flatten_overlay(value, path))
        else:
            out.append((path, value))
    return out


def _set_path(target: dict, path: list[str], value: Any) -> None:
    node = target
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value


def resolve_pipeline_path(pipeline: str, conf_dir: str) -> str:
    """A pipeline name (``demo``) or a path to its YAML file."""
    if pipeline.endswith((".yaml", ".yml")) or os.sep in pipeline:
        return pipeline
    return os.path.join(conf_dir, "pipelines", f"{pipeline}.yaml")


def load_config(
    pipeline: str,
    *,
    registry: Mapping[str, Stage],
    conf_dir: str = "conf",
    experiments: list[str] | None = None,
    overrides: list[str] | None = None,
) -> ResolvedConfig:
    """Read, merge and validate the configuration of one pipeline run.

    ``registry`` maps stage kinds (``uses:``) to :class:`~pipelines.stage.Stage`.
    """
    from pipelines.dag import validate_dag

    base_path = os.path.join(conf_dir, "base.yaml")
    catalog_path = os.path.join(conf_dir, "catalog.yaml")
    pipeline_path = resolve_pipeline_path(pipeline, conf_dir)

    raw_base = _read_yaml(base_path) if os.path.isfile(base_path) else {}
    raw_catalog = _read_yaml(catalog_path) if os.path.isfile(catalog_path) else {}
    raw_pipeline = _read_yaml(pipeline_path)
    sources = [p for p in (base_path, catalog_path) if os.path.isfile(p)] + [pipeline_path]

    # 1. each file on its own, so that an error names the file it is in
    for path, model, raw in ((base_path, _BaseFile, raw_base), (catalog_path, _CatalogFile, raw_catalog)):
        try:
            model.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(_validation_message(path, exc)) from None
    try:
        _PipelineFile.model_validate(raw_pipeline)
    except ValidationError as exc:
        stages = raw_pipeline.get("pipeline", {}).get("stages") if isinstance(raw_pipeline.get("pipeline"), dict) else None
        raise ConfigError(_validation_message(pipeline_path, exc, stages=stages if isinstance(stages, list) else None)) from None

    merged = {
        "runtime": copy.deepcopy(raw_base.get("runtime", {})) or {},
        "tracking": copy.deepcopy(raw_base.get("tracking", {})) or {},
        "catalog": copy.deepcopy(raw_catalog.get("catalog", {})) or {},
        "pipeline": copy.deepcopy(raw_pipeline["pipeline"]),
    }
    stage_index = {spec["name"]: i for i, spec in enumerate(merged["pipeline"]["stages"])}
    # origin of each stage parameter: the pipeline file unless an override set it
    origins: dict[tuple[str, ...], str] = {}

    # 2. experiments, then command-line overrides (later wins)
    changes: list[tuple[list[str], Any, str]] = []
    for name in experiments or []:
        path = name if name.endswith((".yaml", ".yml")) else os.path.join(conf_dir, "experiments", f"{name}.yaml")
        for key_path, value in _flatten_overlay(_read_yaml(path)):
            changes.append((key_path, value, path))
        sources.append(path)
    for text in overrides or []:
        key_path, value = parse_override(text)
        changes.append((key_path, value, f"override {text!r}"))

    for key_path, value, origin in changes:
        section = key_path[0]
        if section in TOP_SECTIONS:
            if len(key_path) < 2:
                raise ConfigError(f"{origin}: {section} needs a key")
            _set_path(merged[section], key_path[1:], value)
            origins[tuple(key_path)] = origin
        elif section in stage_index:
            params = merged["pipeline"]["stages"][stage_index[section]].setdefault("params", {})
            _set_path(params, key_path[1:], value)
            origins[tuple(key_path)] = origin
        else:
            known = ", ".join(list(TOP_SECTIONS) + sorted(stage_index))
            raise ConfigError(f"{origin}: unknown section {section!r}; expected one of: {known}")

    # 3. the merged configuration as a whole
    def blame(path: tuple[str, ...], default: str) -> str:
        best = default
        for key, origin in origins.items():
            if path[: len(key)] == key or key[: len(path)] == path:
                best = origin
        return best

    try:
        base = _BaseFile.model_validate({"runtime": merged["runtime"], "tracking": merged["tracking"]})
        catalog = _CatalogFile.model_validate({"catalog": merged["catalog"]}).catalog
    except ValidationError as exc:
        err = exc.errors()[0]
        origin = blame(tuple(str(p) for p in err["loc"]), "configuration")
        raise ConfigError(_validation_message(origin, exc)) from None
    spec = PipelineSpec.model_validate(merged["pipeline"])

    # 4. each stage's parameters against its kind's Params model
    stage_params: dict[str, StageParams] = {}
    for i, stage_spec in enumerate(spec.stages):
        where = f"stages[{i}] ({stage_spec.name})"
        kind = registry.get(stage_spec.uses)
        if kind is None:
            raise ConfigError(
                f"{pipeline_path}: {where}.uses: unknown stage kind {stage_spec.uses!r}; "
                f"known kinds: {', '.join(sorted(registry))} (list them with `fsr stages`)"
            )
        try:
            stage_params[stage_spec.name] = kind.params.model_validate(stage_spec.params,
                                                                       context={"conf_dir": conf_dir})
        except ValidationError as exc:
            lines = []
            for err in exc.errors():
                origin = blame((stage_spec.name,) + tuple(str(p) for p in err["loc"]), pipeline_path)
                lines.append(_validation_message(origin, [err], prefix=f"{where}.params."))
            raise ConfigError("\n".join(lines)) from None

    order = validate_dag(spec, registry=registry, catalog=catalog, origin=pipeline_path)
    resolved = ResolvedConfig(
        runtime=base.runtime,
        tracking=base.tracking,
        catalog=catalog,
        pipeline=spec,
        stage_params=stage_params,
        order=order,
        sources=sources,
        overrides=list(overrides or []),
    )
    from pipelines.cluster import check_cluster_storage

    check_cluster_storage(resolved)  # on a cluster, node-local storage is refused here, before any work
    return resolved
