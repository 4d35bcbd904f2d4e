"""What the critical-resolution study of ``fsr compare`` costs, through Ray Data and on the driver.

    python bench/critical_resolution_cost.py [--faces 32] [--sizes 8,12,16,24,32,48,64,96,128] [--num-cpus 2]

On the first ``--faces`` of scikit-image's LFW subset (real faces, 25x25 grey, MATLAB-bicubic
upsized to 128 px, written as a shard folder), for the bicubic baseline:

- **driver**: :class:`~fsr_core.restore.batch.CriticalResolutionDescriber` called in this process
  on the decoded crops (what an in-process study would do: load dlib's descriptor, restore from
  each size, describe), wall and CPU seconds;
- **ray**: :func:`pipelines.compare.critical_resolution` (what ``fsr compare`` runs: a Ray Data
  read, filter and one-actor pool on a local Ray that is already started), wall seconds, the
  first call and a second one;

and the ratio ray / driver. Both give the same curve (checked). Prints one line per measurement.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _faces(count: int) -> np.ndarray:
    import skimage.data

    from fsr_core.degradation.resize import imresize

    grey = np.round(skimage.data.lfw_subset()[:count] * 255).astype(np.uint8)
    return np.stack([imresize(np.repeat(g[..., None], 3, axis=-1), output_size=(128, 128)) for g in grey])


def _write(folder: str, faces: np.ndarray) -> list[str]:
    from fsr_core.data.codec import encode_png
    from fsr_core.data.schema import make_face_id
    from fsr_core.data.shards import ShardWriter

    rows = [{"id": make_face_id("lfw_bench", f"lfw/{i}"), "image_png": encode_png(x), "height": 128, "width": 128,
             "source": "lfw_bench", "source_uri": f"lfw/{i}", "split": "test"} for i, x in enumerate(faces)]
    with ShardWriter(folder, max_rows_per_shard=16) as writer:
        writer.write_rows(rows)
    return [r["id"] for r in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faces", type=int, default=32)
    parser.add_argument("--sizes", default="8,12,16,24,32,48,64,96,128")
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    import ray

    from fsr_core.metrics.identity import critical_resolution_curve
    from fsr_core.restore.batch import CriticalResolutionDescriber, critical_column
    from pipelines.compare import critical_resolution
    from pipelines.model_registry import load_restorer, resolve_model
    from pipelines.stages.evaluate import EvaluateSRParams

    faces = _faces(args.faces)
    with tempfile.TemporaryDirectory(prefix="fsr-bench-cr-") as folder:
        ids = _write(folder, faces)
        wall, cpu = time.perf_counter(), time.process_time()
        out = CriticalResolutionDescriber(model_uri="bicubic:x8", loader=load_restorer, sizes=sizes)(
            {"id": np.array(ids, dtype=object), "image": faces})
        driver = critical_resolution_curve(out["dlib_truth"], {s: out[critical_column("dlib", s)] for s in sizes})
        driver_wall, driver_cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"driver: {driver_wall:.1f} s wall, {driver_cpu:.1f} s CPU for {args.faces} faces x {len(sizes)} sizes")

        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
        params = EvaluateSRParams(split=None, batch_size=32)
        ref = resolve_model("bicubic:x8")
        for attempt in ("first", "second"):
            wall = time.perf_counter()
            curves = critical_resolution(folder, ref, params, ids=ids, sizes=sizes, tracking_uri=None)
            ray_wall = time.perf_counter() - wall
            print(f"ray ({attempt} call): {ray_wall:.1f} s wall; ray / driver = {ray_wall / driver_wall:.2f}")
        assert curves["dlib"]["match_rate"] == driver["match_rate"], (curves["dlib"], driver)
        print(f"curve: {dict(zip(driver['sizes'], driver['match_rate']))}, knee {driver['knee']}")
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
