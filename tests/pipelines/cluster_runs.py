"""Runs on a multi-node Ray cluster on one machine (``ray.cluster_utils.Cluster``), each in its own
process, so that the test session's own Ray is left alone::

    python -m tests.pipelines.cluster_runs SCENARIO WORK_DIR   ->  JSON on the last line of stdout

The head advertises no CPUs (as on KubeRay), so every task that needs a CPU runs on a worker node.
The worker nodes are started before the driver sets the variables it should carry: like the pods
of a real cluster, they do not have the driver's environment.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import threading
import time

from pydantic import Field

from pipelines.stage import Stage, StageContext, StageParams


class NodesParams(StageParams):
    tasks: int = Field(4, ge=1)


def _where(index: int) -> dict:
    import ray

    time.sleep(0.5)
    return {"task": index, "node": ray.get_runtime_context().get_node_id(),
            "carried": os.environ.get("FSR_TEST_SETTING"), "secret": os.environ.get("AWS_SECRET_ACCESS_KEY")}


def record_nodes(ctx: StageContext) -> dict[str, str]:
    """A stage whose 1-CPU tasks write where they ran and what environment they saw."""
    import ray

    from fsr_core import storage

    remote = ray.remote(num_cpus=1)(_where)
    seen = ray.get([remote.remote(i) for i in range(ctx.params.tasks)])
    storage.write_bytes(storage.join(ctx.outputs["nodes"], "nodes.json"), json.dumps(seen).encode())
    return {"nodes": ctx.outputs["nodes"]}


NODES = Stage("record_nodes", record_nodes, NodesParams, inputs=(), outputs=("nodes",),
              description="test: where 1-CPU tasks run")


def _log(text: str) -> None:
    print(f"[cluster_runs {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _cluster(workers: int, cpus: int = 1):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=cpus) for _ in range(workers)]
    return cluster, nodes


def _conf(work: str, stages: list[dict], catalog: dict | None = None) -> str:
    import yaml

    root = os.path.join(work, "conf")
    os.makedirs(os.path.join(root, "pipelines"), exist_ok=True)
    with open(os.path.join(root, "base.yaml"), "w") as fh:
        yaml.safe_dump({"runtime": {"work_root": os.path.join(work, "work"), "shared_filesystems": [work]},
                        "tracking": {"experiment": "cluster"}}, fh)
    with open(os.path.join(root, "catalog.yaml"), "w") as fh:
        yaml.safe_dump({"catalog": catalog or {}}, fh)
    with open(os.path.join(root, "pipelines", "p.yaml"), "w") as fh:
        yaml.safe_dump({"pipeline": {"name": "p", "stages": stages}}, fh)
    return root


def pipeline(work: str) -> dict:
    """Two worker nodes: a smoke pipeline (synthetic faces, degrade, a node probe) spreads its tasks
    over both, carries the driver's settings (not its secrets), and a re-run reuses every stage."""
    import ray

    from fsr_core.data.shards import list_shards, read_faces
    from pipelines.config import load_config
    from pipelines.runner import run_pipeline
    from pipelines.stages import stage_kinds

    cluster, _ = _cluster(2)
    os.environ.update({"FSR_TEST_SETTING": "carried", "AWS_SECRET_ACCESS_KEY": "sentinel-never-carried"})
    kinds = {**stage_kinds(), "record_nodes": NODES}
    conf = _conf(work, [
        {"name": "faces", "uses": "ingest_synthetic_faces",
         "params": {"num_identities": 4, "renders_per_identity": 1, "size": 24, "identities_per_shard": 1,
                    "task_cpus": 1}},
        {"name": "lr", "uses": "degrade", "inputs": {"hr": "faces.faces"},
         "params": {"chain": [{"op": "downsample", "scale": 4, "method": "matlab_bicubic"}], "task_cpus": 1}},
        {"name": "probe", "uses": "record_nodes", "params": {"tasks": 4}},
    ])
    overrides = [f"runtime.ray_address={cluster.address}", "runtime.carry_env=[FSR_TEST_SETTING]"]
    first = run_pipeline(load_config("p", registry=kinds, conf_dir=conf, overrides=overrides), registry=kinds,
                         printer=None)
    with open(os.path.join(first.stages["probe"].outputs["nodes"], "nodes.json")) as fh:
        seen = json.load(fh)
    second = run_pipeline(load_config("p", registry=kinds, conf_dir=conf, overrides=overrides), registry=kinds,
                          printer=None)
    shard = list_shards(first.stages["faces"].outputs["faces"])[1]
    with open(shard, "r+b") as fh:  # half-written, as a node lost mid-copy would leave it
        fh.truncate(os.path.getsize(shard) // 2)
    third = run_pipeline(load_config("p", registry=kinds, conf_dir=conf, overrides=overrides), registry=kinds,
                         printer=None)
    restore = _restore(work, cluster.address)
    out = {
        "executed": first.executed, "cached_again": second.cached,
        "after_truncation": {"executed": sorted(third.executed), "cached": sorted(third.cached),
                             "rows": read_faces(third.stages["faces"].outputs["faces"]).num_rows},
        "probe_nodes": sorted({s["node"] for s in seen}), "carried": sorted({s["carried"] for s in seen}),
        "secret": sorted({str(s["secret"]) for s in seen}),
        "worker_nodes": sorted(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")),
        "faces_shards": len(list_shards(first.stages["faces"].outputs["faces"])),
        "lr_rows": read_faces(first.stages["lr"].outputs["lr"]).num_rows,
        **restore,
    }
    ray.shutdown()
    cluster.shutdown()
    return out


def _restore(work: str, address: str) -> dict:
    """``fsr restore`` of a small photo archive on the cluster (bicubic, no registry needed), two model
    actors: the manifest names the node of the task that detected each face and of the actor that
    restored it."""
    import cv2
    import skimage.data

    from pipelines.archive_restore import read_manifest
    from pipelines.cli import main

    archive = os.path.join(work, "archive")
    os.makedirs(archive, exist_ok=True)
    for index, size in enumerate((256, 224, 240, 232, 248, 216, 264, 208)):  # 8 units for 2 actors
        image = cv2.resize(skimage.data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)
        cv2.imwrite(os.path.join(archive, f"astro-{index}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    out = os.path.join(work, "restored")
    code = main(["restore", "--input", archive, "--output", out, "--model", "bicubic", "--no-tracking",
                 "--ray-address", address, "--shared-fs", work, "--unit-size", "1", "--score-threshold", "0.9",
                 # two actors (SPREAD: one a node) that hold no CPU: Ray Data 2.60's ListFiles asks for a whole
                 # CPU of one node whatever the read's setting, and these nodes have one each
                 "--num-actors", "2", "--actor-cpus", "0"])
    manifest = read_manifest(out).to_pylist() if code == 0 else []
    return {"restore_exit": code, "restored_faces": sum(r["status"] == "restored" for r in manifest),
            "detect_nodes": sorted({r["detected_on"] for r in manifest if r["status"] == "restored"}),
            "restore_nodes": sorted({r["restored_on"] for r in manifest if r["status"] == "restored"})}


def node_loss(work: str) -> dict:
    """One worker node runs the training worker; it is removed after the first checkpoint and a new
    node joins: Ray Train restarts the worker group there from the newest checkpoint and the stage
    finishes."""
    import ray

    from pipelines.config import load_config
    from pipelines.runner import run_pipeline
    from pipelines.stages import stage_kinds
    from tests.pipelines.test_method_shape import _write_hr

    # 2 CPUs a node: Ray Data's ListFiles tasks ask for a whole CPU whatever the read's setting, so beside a
    # 0.5-CPU Train worker a 1-CPU node cannot read (a limit of Ray Data 2.60, not of this test)
    cluster, (node,) = _cluster(1, cpus=2)
    hr = _write_hr(os.path.join(work, "hr"), count=8)
    kinds = stage_kinds()
    conf = _conf(work, [{"name": "train", "uses": "toy_train", "inputs": {"hr": "hr"},
                         "params": {"num_workers": 1, "cpus_per_worker": 0.5, "max_steps": 8, "report_every": 1,
                                    "step_sleep": 0.5, "max_failures": 1, "worker_start_timeout_s": 60,
                                    "controller_failure_limit": 1}}],
                 catalog={"hr": {"uri": hr, "kind": "shards"}})
    config = load_config("p", registry=kinds, conf_dir=conf, overrides=[f"runtime.ray_address={cluster.address}"])
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = run_pipeline(config, registry=kinds, printer=None)
        except Exception as exc:  # noqa: BLE001 - reported below
            outcome["error"] = f"{type(exc).__name__}: {getattr(exc, 'summary', exc)}"

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.time() + 240
    pattern = os.path.join(work, "work", "p", "train", "*", "train_run", "train", "checkpoint_*")
    while not glob.glob(pattern) and time.time() < deadline and thread.is_alive():
        time.sleep(0.2)
    checkpoints_at_loss = len(glob.glob(pattern))
    _log(f"{checkpoints_at_loss} checkpoint(s): removing the training node")
    cluster.remove_node(node, allow_graceful=False)
    lost = time.time()
    time.sleep(2)
    cluster.add_node(num_cpus=2)
    _log("a new node joined")
    thread.join(timeout=240)
    _log(f"pipeline {'ended' if not thread.is_alive() else 'still running'}")
    out = {"checkpoints_at_loss": checkpoints_at_loss, "seconds_after_loss": round(time.time() - lost, 1),
           "finished": not thread.is_alive(), "error": outcome.get("error")}
    result = outcome.get("result")
    if result is not None:
        with open(os.path.join(result.stages["train"].outputs["train_run"], "fit.json")) as fh:
            out["final_step"] = json.load(fh)["final_step"]
        with open(os.path.join(result.stages["train"].outputs["checkpoint"], "train_state.json")) as fh:
            state = json.load(fh)
        out["restored_from"], out["attempt_start_step"] = state.get("restored_from"), state.get("attempt_start_step")
        out["executed"] = result.executed
    ray.shutdown()
    cluster.shutdown()
    return out


if __name__ == "__main__":
    scenario, work = sys.argv[1], sys.argv[2]
    result = {"pipeline": pipeline, "node_loss": node_loss}[scenario](work)
    print(json.dumps(result))
