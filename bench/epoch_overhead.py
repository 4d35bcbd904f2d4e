"""What an epoch of a training stage's data costs: streamed (read + decode again every epoch) against
materialised once (``TrainingParams.materialize_mb``, the default for data sets up to 512 MB).

Writes ``--rows`` demo-world faces of ``--size`` px as one shard, then runs a one-worker Ray Train fit
for each mode, side by side in one run, whose loop only iterates the worker's shard
(``iter_torch_batches``, the training loop's call) with a fixed ``--step-seconds`` sleep per batch
standing in for the step; prints the seconds of each epoch and the data's own share (epoch time less
the sleeps). The first epoch of each mode includes Ray Data's start.

    .venv/bin/python bench/epoch_overhead.py [--rows 384] [--size 64] [--epochs 6] [--cpus 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _loop(config: dict) -> None:
    import ray.train

    shard = ray.train.get_dataset_shard("data")
    epochs = []
    for _ in range(config["epochs"]):
        start, batches = time.perf_counter(), 0
        for _batch in shard.iter_torch_batches(batch_size=config["batch_size"], drop_last=True,
                                               local_shuffle_buffer_size=64):
            batches += 1
            time.sleep(config["step_seconds"])
        epochs.append([time.perf_counter() - start, batches])
    with open(config["out"], "w") as fh:  # one machine: the worker's file is the driver's
        json.dump(epochs, fh)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=384)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--step-seconds", type=float, default=0.02)
    p.add_argument("--cpus", type=int, default=2)
    args = p.parse_args(argv)

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from fsr_core.data.demo_world import synthetic_face_rows
    from fsr_core.data.ray_datasets import training_dataset
    from fsr_core.data.shards import ShardWriter
    from pipelines.stages.train import _materialize

    work = tempfile.mkdtemp(prefix="fsr-epoch-bench-")
    identities = range(-(-args.rows // 4))
    with ShardWriter(os.path.join(work, "faces")) as writer:
        rows = synthetic_face_rows(identities, renders_per_identity=4, size=args.size, seed=0,
                                   split_fractions={"train": 1.0})
        for _, row in zip(range(args.rows), rows):
            writer.write(row)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    results = {}
    for mode in ("streamed", "materialized"):
        dataset = training_dataset(os.path.join(work, "faces"), size=args.size, split="train")
        start = time.perf_counter()
        if mode == "materialized":
            dataset = _materialize(dataset)
        prepare = time.perf_counter() - start
        out = os.path.join(work, f"{mode}.json")
        trainer = TorchTrainer(_loop, train_loop_config={"epochs": args.epochs, "batch_size": args.batch_size,
                                                         "step_seconds": args.step_seconds, "out": out},
                               datasets={"data": dataset},
                               scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
                               run_config=RunConfig(storage_path=os.path.join(work, "ray"), name=mode))
        trainer.fit()
        with open(out) as fh:
            epochs = json.load(fh)
        results[mode] = {"prepare_s": prepare, "epochs": epochs}
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    print(f"{args.rows} crops of {args.size} px, batch {args.batch_size}, {args.step_seconds * 1000:.0f} ms per step, "
          f"{args.cpus} CPUs; seconds per epoch (data's share: epoch less the steps' sleeps)")
    print(f"{'epoch':>6s} {'streamed':>18s} {'materialized':>18s}")
    for k in range(args.epochs):
        cells = []
        for mode in ("streamed", "materialized"):
            seconds, batches = results[mode]["epochs"][k]
            cells.append(f"{seconds:7.2f} ({seconds - batches * args.step_seconds:5.2f})")
        print(f"{k:>6d} {cells[0]:>18s} {cells[1]:>18s}")
    steady = {mode: sum(s - b * args.step_seconds for s, b in r["epochs"][1:]) / max(1, args.epochs - 1)
              for mode, r in results.items()}
    print(f"materialising took {results['materialized']['prepare_s']:.2f} s once; data per epoch after the first: "
          f"streamed {steady['streamed']:.2f} s, materialized {steady['materialized']:.2f} s")
    return results


if __name__ == "__main__":
    main()
