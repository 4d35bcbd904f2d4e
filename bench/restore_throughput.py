"""Archive restoration: batched Ray Data pipeline vs a plain per-face loop, and memory vs video length.

    python bench/restore_throughput.py [--images 96] [--channels 16] [--video-seconds 4] [--num-cpus 2]

Printed side by side in one run:

1. faces/second of ``restore_archive`` (detect tasks -> model actor pool, batched forward -> write
   tasks; crops only, no paste-back) and of a plain loop over the same archive in this process
   (read, decode, detect, align, one forward per face, write the PNG), and their ratio. The
   pipeline's time includes its fixed costs (actor start, model load), measured from the call;
   "cold" is the session's first job (worker processes start and import torch/dlib), "warm" the
   same job again.
2. peak memory while restoring a video of ``--video-seconds`` and one 10x longer (same content,
   every sampled frame pasted back and encoded): the peak of the summed RSS of the Ray worker
   processes (``ray::`` processes: detect tasks, model actors, write tasks) and, separately, the
   driver's RSS, sampled every 0.1 s. Streaming keeps the ratio near 1 (it would be ~10 if a
   video were held in memory). The long video is also run in chunks of ``--video-seconds``
   (10 work units: chunked decoding, the ordered per-chunk pass, the chunks joined at the end).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import threading
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def astronaut(size: int) -> np.ndarray:
    import skimage.data

    return cv2.resize(skimage.data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)


def make_images(root: str, n: int) -> None:
    for i in range(n):
        size = (256, 288, 320, 384)[i % 4]
        folder = os.path.join(root, f"set{i % 3}", f"sub{i % 2}")
        os.makedirs(folder, exist_ok=True)
        ext = (".jpg", ".png", ".webp")[i % 3]
        ok, data = cv2.imencode(ext, cv2.cvtColor(astronaut(size), cv2.COLOR_RGB2BGR))
        with open(os.path.join(folder, f"img{i:04d}{ext}"), "wb") as fh:
            fh.write(data.tobytes())


def make_video(path: str, seconds: float, fps: int = 10, size: int = 320) -> None:
    import av

    base = astronaut(size + 16)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(int(seconds * fps)):
            s = i % 16
            frame = np.ascontiguousarray(base[s:s + size, s:s + size])
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def register(tracking_uri: str, folder: str, channels: int) -> str:
    import torch
    from mlflow import MlflowClient

    from fsr_core.networks.two_step import L2HGenerator
    from fsr_core.training.checkpoint import save_checkpoint
    from fsr_core.training.objective import RestorerSpec
    from pipelines.model_registry import register_restorer

    torch.manual_seed(0)
    network = L2HGenerator(channels=channels, blocks_per_section=(1, 1, 1, 1), reduction=4).eval()
    spec = RestorerSpec(kind="feed_forward", networks=("l2h",), input_size=16, scale=8)
    save_checkpoint(os.path.join(folder, "ckpt"), networks={"l2h": network}, train_state={},
                    restorers={"l2h": spec.to_dict()})
    client = MlflowClient(tracking_uri)
    run_id = client.create_run(client.create_experiment("bench")).info.run_id
    register_restorer(checkpoint_dir=os.path.join(folder, "ckpt"), restorer="l2h", registered_name="bench_l2h",
                      alias="champion", tracking_uri=tracking_uri, run_id=run_id)
    return "models:/bench_l2h@champion"


def per_face_loop(root: str, out: str, model: str, tracking_uri: str, settings) -> int:
    """The plain way: one file, one face, one forward at a time, in one process."""
    from fsr_core import storage
    from fsr_core.data.codec import encode_png
    from fsr_core.restore.archive import FrameRecord, iter_file_records, safe_relative_path
    from pipelines.archive_restore import list_archive
    from pipelines.model_registry import load_restorer

    restorer, _ = load_restorer(model, tracking_uri=tracking_uri)
    faces = 0
    for item in list_archive(root):
        for record in iter_file_records(item["uri"], item["media"], settings):
            if not isinstance(record, FrameRecord):
                continue
            for face, crop in zip(record.faces, record.crops):
                sr = restorer.restore(crop[None], batch_size=1)[0]
                storage.write_bytes(os.path.join(out, safe_relative_path(item["relative"]), f"face{face.index}.png"),
                                    encode_png(sr))
                faces += 1
    return faces


def _rss(pid: str) -> int:
    """Resident set size of a process in bytes, from /proc (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _ray_workers() -> list[str]:
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if fh.read(5) == b"ray::":
                    pids.append(pid)
        except OSError:
            pass
    return pids


class PeakRSS:
    """Samples the summed RSS of Ray worker processes (``ray::...``) and the driver's RSS every ``interval`` s."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.workers = self.driver = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = str(os.getpid())
        while not self._stop.is_set():
            self.workers = max(self.workers, sum(_rss(pid) for pid in _ray_workers()))
            self.driver = max(self.driver, _rss(me))
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--unit-size", type=int, default=8)
    parser.add_argument("--channels", type=int, default=16, help="L2H width (the tests use 8)")
    parser.add_argument("--video-seconds", type=float, default=4.0)
    parser.add_argument("--sample-fps", type=float, default=5.0)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--num-actors", type=int, default=1)
    args = parser.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (sys.path[0], os.environ.get("PYTHONPATH", "")) if p)
    import ray

    from fsr_core.restore.archive import ArchiveSettings
    from pipelines.archive_restore import restore_archive

    tmp = tempfile.mkdtemp(prefix="fsr-bench-restore-")
    tracking_uri = f"sqlite:///{tmp}/mlflow.db"
    model = register(tracking_uri, tmp, args.channels)
    images = os.path.join(tmp, "images")
    make_images(images, args.images)
    short, long = os.path.join(tmp, "short"), os.path.join(tmp, "long")
    make_video(os.path.join(short, "clip.mp4"), args.video_seconds)
    make_video(os.path.join(long, "clip.mp4"), 10 * args.video_seconds)
    settings = ArchiveSettings(input_size=16, sample_fps=args.sample_fps)  # the default detector
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)

    quiet = dict(printer=None, tracking_uri=tracking_uri, settings=settings, num_actors=args.num_actors)
    start = time.perf_counter()
    faces_loop = per_face_loop(images, os.path.join(tmp, "loop"), model, tracking_uri, settings)
    loop_s = time.perf_counter() - start
    runs = {}
    for name in ("cold", "warm"):  # warm: same Ray session, worker processes already import torch/dlib
        start = time.perf_counter()
        result = restore_archive(images, os.path.join(tmp, f"out-images-{name}"), model, paste=False,
                                 write_video=False, unit_size=args.unit_size, **quiet)
        runs[name] = (result["faces"], time.perf_counter() - start)

    memory = {}
    chunked = dict(quiet, settings=dataclasses.replace(settings, chunk_seconds=args.video_seconds))
    for name, root, options in (("short", short, quiet), ("long", long, quiet), ("long, chunked", long, chunked)):
        start = time.perf_counter()
        with PeakRSS() as peak:
            res = restore_archive(root, os.path.join(tmp, f"out-{name.replace(', ', '-')}"), model, **options)
        memory[name] = (res["faces"], time.perf_counter() - start, peak.workers, peak.driver, res["units"])
    ray.shutdown()

    mib = 1 << 20
    print(f"\narchive: {args.images} astronaut images (256-384 px), L2H channels={args.channels}, x8, "
          f"{args.num_cpus} Ray CPUs, {args.num_actors} model actor(s)")
    print(f"{'':28}{'faces':>8}{'seconds':>10}{'faces/s':>10}")
    print(f"{'per-face loop (1 process)':28}{faces_loop:>8}{loop_s:>10.2f}{faces_loop / loop_s:>10.2f}")
    for name, (faces, seconds) in runs.items():
        print(f"{'Ray Data pipeline, ' + name:28}{faces:>8}{seconds:>10.2f}{faces / seconds:>10.2f}"
              f"   ratio to loop {(faces / seconds) / (faces_loop / loop_s):.2f}x")
    print(f"\nvideo 320x320 @10 fps sampled at {args.sample_fps:g} fps, paste-back + encode")
    print(f"{'':34}{'faces':>8}{'seconds':>10}{'workers MiB':>13}{'driver MiB':>12}")
    for name in memory:
        faces, seconds, workers, driver, units = memory[name]
        label = f"{name} ({args.video_seconds * (1 if name == 'short' else 10):g} s, {units} unit(s))"
        print(f"{label:34}{faces:>8}{seconds:>10.2f}{workers / mib:>13.0f}{driver / mib:>12.0f}")
    for name in ("long", "long, chunked"):
        print(f"peak RSS ratio {name} / short: workers {memory[name][2] / memory['short'][2]:.2f}, "
              f"driver {memory[name][3] / memory['short'][3]:.2f}")


if __name__ == "__main__":
    main()
