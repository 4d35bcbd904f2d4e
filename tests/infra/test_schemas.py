"""The deployment files against the real schemas, strictly (an unknown field is an error, as with
`kubectl apply`'s default strict field validation):

- Kubernetes objects against Kubernetes' own schemas (the `kubernetes-validate` package), for the
  oldest and the newest Kubernetes version it ships beside the ones we name;
- RayCluster and RayJob against the `openAPIV3Schema` of the KubeRay CRDs of every supported
  operator version (vendored in `tests/infra/schemas/`, unknown fields refused unless the CRD
  preserves them);
- the cluster launcher's config against Ray's schema from the ray wheel.

:func:`schema_errors` takes an infra folder, so the typos that once passed the suite, planted in a
copy of `infra/`, are each shown to fail it.
"""

from __future__ import annotations

import functools
import glob
import gzip
import json
import os
import shutil
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCHEMAS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schemas")
KUBERAY_VERSIONS = sorted(os.path.basename(p)[len("kuberay-"):] for p in glob.glob(os.path.join(SCHEMAS, "kuberay-*")))
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml.gz", "RayJob": "ray.io_rayjobs.yaml.gz"}
K8S_DIRS = ("kuberay", "mlflow")


def _kubernetes_versions() -> tuple[str, ...]:
    import kubernetes_validate.utils as kv

    return ("1.29.0", kv.latest_version())  # CronJob timeZone is GA from 1.27; the newest schemas shipped


# ---------------------------------------------------------------------------- schemas
@functools.lru_cache(maxsize=None)
def _kubernetes_validator(version: str, kind: str, api_version: str):
    import re

    import kubernetes_validate.utils as kv
    from referencing import Registry, Resource

    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    folder = f"kubernetes-json-schema/v{version}-local-strict"
    schema = kv.schema_contents(f"{folder}/{kind.lower()}-{group_version}.json", version)
    registry = Resource.from_contents(kv.schema_contents(f"{folder}/_definitions.json", version)) @ (
        Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _strict(schema: dict) -> dict:
    """A CRD's OpenAPI v3 schema as a JSON schema the way the API server applies it: fields it does
    not declare are errors (unless ``x-kubernetes-preserve-unknown-fields``), ``nullable`` allows
    null, ``x-kubernetes-int-or-string`` either."""
    out = dict(schema)
    if "properties" in schema:
        out["properties"] = {name: _strict(sub) for name, sub in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict(schema["additionalProperties"])
    if isinstance(schema.get("items"), dict):
        out["items"] = _strict(schema["items"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in schema:
            out[key] = [_strict(sub) for sub in schema[key]]
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if schema.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


@functools.lru_cache(maxsize=None)
def _crd_validator(operator: str, kind: str, api_version: str):
    with gzip.open(os.path.join(SCHEMAS, f"kuberay-{operator}", CRD_FILES[kind]), "rt", encoding="utf-8") as fh:
        crd = yaml.safe_load(fh)
    group, version = api_version.split("/")
    assert crd["spec"]["group"] == group
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    if version not in versions:
        return None
    schema = _strict(versions[version]["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: checked by the API server itself
    return jsonschema.Draft7Validator(schema)


@functools.lru_cache(maxsize=1)
def _launcher_schema() -> dict:
    import ray

    with open(os.path.join(os.path.dirname(ray.__file__), "autoscaler", "ray-schema.json"), encoding="utf-8") as fh:
        return json.load(fh)


def _format(where: str, error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path) or "<top>"
    return f"{where}: {path}: {error.message[:300]}"


def _documents(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [d for d in yaml.safe_load_all(fh) if isinstance(d, dict)]


def schema_errors(infra: str) -> list[str]:
    """Every schema violation of the deployment files under ``infra`` (empty: all valid)."""
    errors: list[str] = []
    for folder in K8S_DIRS:
        for path in sorted(glob.glob(os.path.join(infra, folder, "*.yaml"))):
            rel = os.path.relpath(path, os.path.dirname(infra))
            for doc in _documents(path):
                kind, api_version = doc.get("kind"), doc.get("apiVersion", "")
                if kind == "Kustomization":
                    continue
                meta = doc.get("metadata") or {}
                where = f"{rel}: {kind}/{meta.get('name') or meta.get('generateName')}"
                if kind in CRD_FILES:
                    for operator in KUBERAY_VERSIONS:
                        validator = _crd_validator(operator, kind, api_version)
                        if validator is None:
                            errors.append(f"{where}: KubeRay {operator} has no {api_version}")
                            continue
                        errors += [_format(f"{where} (KubeRay {operator} CRD)", e) for e in validator.iter_errors(doc)]
                    continue
                for version in _kubernetes_versions():
                    validator = _kubernetes_validator(version, kind, api_version)
                    errors += [_format(f"{where} (Kubernetes {version})", e) for e in validator.iter_errors(doc)]
    launcher = os.path.join(infra, "ray-cluster-launcher", "cluster.yaml")
    for doc in _documents(launcher):
        validator = jsonschema.Draft7Validator(_launcher_schema())
        errors += [_format(f"{os.path.relpath(launcher, os.path.dirname(infra))} (Ray launcher schema)", e)
                   for e in validator.iter_errors(doc)]
    return errors


# ---------------------------------------------------------------------------- the files as they are
def test_vendored_crds_cover_the_supported_operators():
    assert KUBERAY_VERSIONS == ["v1.4.2", "v1.7.0"]
    for operator in KUBERAY_VERSIONS:
        for kind in CRD_FILES:
            assert _crd_validator(operator, kind, "ray.io/v1") is not None


def test_deployment_files_match_the_real_schemas():
    errors = schema_errors(os.path.join(ROOT, "infra"))
    assert errors == [], "\n".join(errors)


# ---------------------------------------------------------------------------- typos that once passed
TYPOS = {
    # name: (file under infra/, text as it is, the typo, what the error names)
    "string-for-a-boolean": ("kuberay/rayjob-retrain.yaml", "  shutdownAfterJobFinishes: true\n",
                             "  shutdownAfterJobFinishes: \"true\"\n", "spec.shutdownAfterJobFinishes: 'true' is not of type 'boolean'"),
    "tolerations-effect": ("kuberay/raycluster.yaml", "              effect: NoSchedule\n",
                           "              efect: NoSchedule\n", "('efect' was unexpected)"),
    "ttlSecondAfterFinished": ("kuberay/rayjob-retrain.yaml", "  ttlSecondsAfterFinished: 600\n",
                               "  ttlSecondAfterFinished: 600\n", "('ttlSecondAfterFinished' was unexpected)"),
    "secretRef-optinal": ("mlflow/deployment.yaml", "                optional: true\n",
                          "                optinal: true\n", "('optinal' was unexpected)"),
    "string-containerPort": ("mlflow/deployment.yaml", "{name: http, containerPort: 5000}",
                             "{name: http, containerPort: \"5000\"}", "containerPort: '5000' is not of type 'integer'"),
    "readOnlyRootFileSystem": ("kuberay/cronjob-retrain.yaml", "                readOnlyRootFilesystem: true\n",
                               "                readOnlyRootFileSystem: true\n",
                               "('readOnlyRootFileSystem' was unexpected)"),
}


@pytest.mark.parametrize("typo", sorted(TYPOS))
def test_each_typo_planted_in_a_copy_of_infra_fails(typo, tmp_path):
    rel, original, planted, expected = TYPOS[typo]
    copy = tmp_path / "infra"
    shutil.copytree(os.path.join(ROOT, "infra"), copy)
    path = copy / rel
    text = path.read_text(encoding="utf-8")
    assert text.count(original) == 1, f"{rel} no longer holds {original!r} once: update the planted typo"
    path.write_text(text.replace(original, planted), encoding="utf-8")
    errors = schema_errors(str(copy))
    assert errors, f"{typo} in {rel} passed the schemas"
    assert all(rel in error for error in errors), errors
    assert any(expected in error for error in errors), "\n".join(errors)
