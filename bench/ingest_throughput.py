"""Ingest throughput: crops per second of the Ray Data ingest with 1 unit task at a time vs 2.

Builds a WIDER FACE tree in a temporary folder (``--images`` JPEGs of ``--side`` x ``--side`` with
``--faces`` annotated boxes each, 40-120 px), starts its own local Ray (``num_cpus=2``), warms the
workers up (the first task of a worker process imports numpy/OpenCV/torch: seconds), then runs the
same ingest into fresh output folders with ``max_tasks=1`` and ``max_tasks=2`` (1 CPU per task),
alternating the order over ``--repeats`` rounds, and prints crops per second of the Ray Data phase
(read -> decode -> crop -> MATLAB bicubic -> PNG -> Parquet) for each, the end-to-end rate
(listing and duplicate check included) and the 2-vs-1 ratio.

    .venv/bin/python bench/ingest_throughput.py [--images 2000] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


def build_tree(root: str, *, images: int, side: int, faces: int, seed: int = 0) -> int:
    """A WIDER FACE layout with ``images`` JPEGs; returns the number of annotated boxes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : 2 * side, 0 : 2 * side].astype(np.float32)
    texture = np.stack([127 + 100 * np.sin(xx * f) * np.cos(yy * g) for f, g in ((0.05, 0.07), (0.11, 0.03), (0.02, 0.09))], -1)
    lines = []
    boxes = 0
    for index in range(images):
        event = f"{index % 20}--Event{index % 20}"
        name = f"{event}/img_{index:05d}.jpg"
        y0, x0 = rng.integers(0, side, 2)
        image = texture[y0 : y0 + side, x0 : x0 + side] + rng.normal(0, 12, (side, side, 3)).astype(np.float32)
        path = os.path.join(root, "WIDER_train", "images", *name.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        cv2.imwrite(path, np.clip(image, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
        lines += [name, str(faces)]
        for _ in range(faces):
            size = int(rng.integers(40, 121))
            x, y = (int(v) for v in rng.integers(0, side - size, 2))
            lines.append(f"{x} {y} {size} {int(size * 1.2) if y + size * 1.2 < side else size} 0 0 0 0 0 0 ")
            boxes += 1
    os.makedirs(os.path.join(root, "wider_face_split"), exist_ok=True)
    with open(os.path.join(root, "wider_face_split", "wider_face_train_bbx_gt.txt"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return boxes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--faces", type=int, default=2, help="annotated boxes per image")
    parser.add_argument("--unit-size", type=int, default=150, help="images per work unit (task)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of (1 task, 2 tasks), order alternating")
    args = parser.parse_args()

    import ray

    from fsr_core.data.ingest.wider_face import WiderFaceReader
    from pipelines.stage import StageContext
    from pipelines.stages.ingest import WiderFaceParams, run_ingest

    work = tempfile.mkdtemp(prefix="fsr-bench-ingest-")
    try:
        started = time.perf_counter()
        data = os.path.join(work, "wider")
        boxes = build_tree(data, images=args.images, side=args.side, faces=args.faces)
        print(f"tree: {args.images} JPEGs {args.side}x{args.side}, {boxes} boxes, built in "
              f"{time.perf_counter() - started:.1f}s ({data})")
        warm = os.path.join(work, "warm")
        build_tree(warm, images=8, side=args.side, faces=args.faces, seed=1)

        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        reader = WiderFaceReader(splits=("train",), min_size=16)

        def ingest(root: str, out: str, tasks: int, unit_size: int) -> dict:
            ctx = StageContext(pipeline="bench", stage=f"tasks{tasks}", params=WiderFaceParams(), work_dir=work,
                               outputs={"faces": os.path.join(out, "faces"), "quarantine": os.path.join(out, "quarantine")})
            return run_ingest(ctx, reader, root, unit_size=unit_size, task_cpus=1.0, max_tasks=tasks, printer=None)

        ingest(warm, os.path.join(work, "out-warm"), 2, 2)  # both worker processes import everything once
        results: dict[int, list[dict]] = {1: [], 2: []}
        for round_index in range(args.repeats):
            for tasks in ((1, 2) if round_index % 2 == 0 else (2, 1)):
                out = os.path.join(work, f"out-{tasks}-{round_index}")
                result = ingest(data, out, tasks, args.unit_size)
                results[tasks].append(result)
                print(f"  round {round_index + 1}, {tasks} task(s): {result['rows']} crops in {result['ray_seconds']:.2f}s "
                      f"of Ray Data ({result['crops_per_second']:.1f} crops/s), {result['seconds']:.2f}s end to end; "
                      f"tasks busy {result['task_seconds'] / result['ray_seconds']:.2f}x in parallel, "
                      f"on a core {100 * result['task_cpu_seconds'] / max(result['task_seconds'], 1e-9):.0f}% of the time")
                shutil.rmtree(out)
        best = {tasks: max(results[tasks], key=lambda r: r["crops_per_second"]) for tasks in (1, 2)}
        print(f"\ningest throughput ({args.images} images, {boxes} boxes, units of {args.unit_size}, "
              f"{os.cpu_count()} visible cores, load average {os.getloadavg()[0]:.1f}; best of {args.repeats}):")
        for tasks in (1, 2):
            r = best[tasks]
            print(f"  {tasks} task(s) x 1 CPU: {r['crops_per_second']:8.1f} crops/s (Ray Data)   "
                  f"{r['rows'] / r['seconds']:8.1f} crops/s end to end   {r['rows']} crops")
        ratio = best[2]["crops_per_second"] / max(best[1]["crops_per_second"], 1e-9)
        print(f"  ratio 2 tasks / 1 task: {ratio:.2f}x")
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
