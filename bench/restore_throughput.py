"""Archive restoration: where the CPU goes, the Ray Data pipeline vs a plain loop, scaling, memory.

    python bench/restore_throughput.py [--images 1000] [--channels 16] [--video-seconds 60]
                                       [--video-height 720] [--cpus 1,2] [--skip-video]

Printed side by side in one run:

1. **Cost breakdown**: CPU milliseconds per face of each step (read, decode, detect, align,
   forward, consistency, encode, write, manifest; :mod:`fsr_core.restore.costs`) for the plain
   loop (:func:`fsr_core.restore.loop.restore_loop`: one process pinned to one core, one thread,
   one forward per face, the same reader, detector, model and writer) and for the pipeline
   (``restore_archive``: the same steps clocked inside its Ray tasks and actors), the pipeline's
   overhead (CPU the machine was busy outside every step: scheduling, serialisation, the object
   store, the driver, Ray's own processes; from ``/proc/stat``, so run it on a quiet machine) and
   the **bound**: faces/s the cores would give if the steps ran back to back with no overhead
   (``cpus x faces / step CPU seconds``).
2. faces/s of the loop and of the pipeline, **warm** (a small job ran first in the same Ray
   session, so worker processes have imported torch/dlib and loaded the detector; the measured
   job's own fixed costs, the model actor's start and load, are in its time), for each ``--cpus``
   (Ray and every process it starts pinned to that many cores with ``sched_setaffinity``), the
   ratio to the loop, the fraction of the bound and the scaling from the first to the last.
3. peak memory while restoring a video of ``--video-seconds`` and one 10x longer (same content,
   every sampled frame pasted back and encoded): the peak of the summed RSS of the Ray worker
   processes (``ray::`` processes; it grows with the units that run side by side, at most one per
   CPU, which a 1-chunk video does not have), of the largest one of them (what streaming keeps
   flat) and, separately, the driver's RSS, sampled every 0.1 s;
   the long one also in chunks of ``--video-seconds`` (chunked decoding, the ordered per-chunk
   pass, the chunks joined at the end).
"""

from __future__ import annotations

import argparse
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


def make_video(path: str, seconds: float, fps: int = 10, height: int = 320) -> None:
    """The astronaut (a face of about a third of the height) drifting a few pixels per frame on a
    16:9 canvas (square when ``height`` <= 320), H.264 (or MPEG-4)."""
    import av

    width = height if height <= 320 else (height * 16 // 9) // 2 * 2
    base = astronaut(height + 16)
    canvas = np.full((height + 16, width + 16, 3), 96, np.uint8)
    canvas[:, (width - height) // 2:(width - height) // 2 + height + 16] = base
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        for i in range(int(seconds * fps)):
            s = i % 16
            frame = np.ascontiguousarray(canvas[s:s + height, s:s + width])
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


def run_loop(root: str, out: str, model: str, tracking_uri: str, settings, forward_batch: int) -> dict:
    """The plain loop (:func:`fsr_core.restore.loop.restore_loop`) on one core, one thread, clocked."""
    import cv2
    import torch

    from fsr_core.restore.costs import StepClock
    from fsr_core.restore.loop import restore_loop
    from pipelines.archive_restore import list_archive
    from pipelines.model_registry import load_restorer

    threads = torch.get_num_threads(), cv2.getNumThreads()
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(affinity)})
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        restorer, _ = load_restorer(model, tracking_uri=tracking_uri)
        settings.face_detector()  # loaded before the clock starts, as the pipeline's warm workers have it
        clock = StepClock()
        log("loop")
        busy = busy_seconds()
        start = time.perf_counter()
        result = restore_loop(list_archive(root), out, restorer, settings=settings, paste=False,
                              faces_per_forward=forward_batch, clock=clock)
        seconds = time.perf_counter() - start
        return {"faces": result["faces"], "seconds": seconds, "steps": dict(clock.seconds),
                "busy": busy_seconds() - busy, "cpus": 1}
    finally:
        torch.set_num_threads(threads[0])
        cv2.setNumThreads(threads[1])
        os.sched_setaffinity(0, affinity)


def process_cpu() -> dict[str, tuple[str, float]]:
    """``{pid: (what it is, CPU seconds so far)}`` of every process (``ray::`` workers by their
    title: ``ray::IDLE``, ``ray::MapWorker(...)``; Ray's daemons by their program name)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        title = argv[0].decode(errors="replace")
        if title.startswith("ray::"):
            name = title.split(" ")[0][:48]
        else:
            name = os.path.basename(title)
            script = next((a.decode(errors="replace") for a in argv[1:3] if a.endswith(b".py")), "")
            if script:
                name = f"{name} {os.path.basename(script)}"
        out[pid] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def cpu_by_process(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds per kind of process between two :func:`process_cpu` samples (the driver: ``driver``)."""
    me = str(os.getpid())
    spent: dict[str, float] = {}
    for pid, (name, seconds) in after.items():
        delta = seconds - before.get(pid, (name, 0.0))[1]
        if delta > 0:
            key = "driver" if pid == me else name
            spent[key] = spent.get(key, 0.0) + delta
    return spent


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy since boot (``/proc/stat``: all but idle and iowait)."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


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
        self.workers = self.driver = self.largest = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = str(os.getpid())
        while not self._stop.is_set():
            sizes = [_rss(pid) for pid in _ray_workers()]
            self.workers = max(self.workers, sum(sizes))
            self.largest = max([self.largest, *sizes])
            self.driver = max(self.driver, _rss(me))
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_pipeline(images: str, warmup: str, out: str, model: str, tracking_uri: str, settings, args,
                 cpus: int, execution: str) -> dict:
    """``restore_archive`` in a fresh local Ray of ``cpus`` CPUs, every process pinned to that many cores."""
    import ray

    from pipelines.archive_restore import restore_archive

    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(sorted(affinity)[:cpus]))
    try:
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        common = dict(printer=None, tracking_uri=tracking_uri, settings=settings, num_actors=args.num_actors,
                      paste=False, write_video=False, unit_size=args.unit_size, batch_size=args.forward_batch,
                      execution=execution)
        log(f"pipeline {execution}, {cpus} CPU(s): warm-up")
        restore_archive(warmup, f"{out}-warmup", model, **common)
        log(f"pipeline {execution}, {cpus} CPU(s): measured run")
        busy, processes = busy_seconds(), process_cpu()
        start = time.perf_counter()
        result = restore_archive(images, out, model, **common)
        seconds = time.perf_counter() - start
        return {"faces": result["faces"], "seconds": seconds, "steps": result["step_cpu_seconds"],
                "busy": busy_seconds() - busy, "driver": result["driver_cpu_seconds"], "cpus": cpus,
                "processes": cpu_by_process(processes, process_cpu())}
    finally:
        ray.shutdown()
        os.sched_setaffinity(0, affinity)


def video_memory(tmp: str, model: str, tracking_uri: str, settings, args) -> dict:
    import dataclasses

    import ray

    from pipelines.archive_restore import restore_archive

    short, long = os.path.join(tmp, "short"), os.path.join(tmp, "long")
    make_video(os.path.join(short, "clip.mp4"), args.video_seconds, height=args.video_height)
    make_video(os.path.join(long, "clip.mp4"), 10 * args.video_seconds, height=args.video_height)
    quiet = dict(printer=None, tracking_uri=tracking_uri, settings=settings, num_actors=args.num_actors)
    chunked = dict(quiet, settings=dataclasses.replace(settings, chunk_seconds=args.video_seconds))
    memory = {}
    ray.init(address="local", num_cpus=max(args.cpus), include_dashboard=False, log_to_driver=False)
    try:
        for name, root, options in (("short", short, quiet), ("long", long, quiet), ("long, chunked", long, chunked)):
            start = time.perf_counter()
            log(f"video: {name}")
            with PeakRSS() as peak:
                res = restore_archive(root, os.path.join(tmp, f"out-{name.replace(', ', '-')}"), model, **options)
            memory[name] = (res["faces"], time.perf_counter() - start, peak.workers, peak.driver, res["units"],
                            peak.largest)
    finally:
        ray.shutdown()
    return memory


def print_costs(runs: dict, steps: tuple) -> None:
    names = list(runs)
    print("\ncost breakdown: CPU ms per face (one core = 1000 ms/s)")
    print(f"{'step':22}" + "".join(f"{n:>20}" for n in names))
    for step in steps:
        if any(step in runs[n]["steps"] for n in names):
            print(f"{step:22}" + "".join(f"{1000 * runs[n]['steps'].get(step, 0.0) / max(runs[n]['faces'], 1):>20.2f}"
                                         for n in names))
    total = {n: sum(runs[n]["steps"].values()) for n in names}
    print(f"{'all steps':22}" + "".join(f"{1000 * total[n] / max(runs[n]['faces'], 1):>20.2f}" for n in names))
    print(f"{'machine busy':22}" + "".join(f"{1000 * runs[n]['busy'] / max(runs[n]['faces'], 1):>20.2f}" for n in names))
    print(f"{'overhead (busy-steps)':22}" + "".join(
        f"{1000 * (runs[n]['busy'] - total[n]) / max(runs[n]['faces'], 1):>20.2f}" for n in names))
    print(f"{'  of which driver':22}" + "".join(
        f"{1000 * runs[n].get('driver', 0.0) / max(runs[n]['faces'], 1):>20.2f}" for n in names))


def print_processes(runs: dict) -> None:
    for name, run in runs.items():
        if "processes" not in run:
            continue
        print(f"\n{name}: CPU ms per face by process (the steps ran inside the ray:: workers)")
        for process, seconds in sorted(run["processes"].items(), key=lambda kv: -kv[1]):
            if 1000 * seconds / max(run["faces"], 1) >= 0.05:
                print(f"  {process:60}{1000 * seconds / max(run['faces'], 1):>10.2f}")


def print_images(runs: dict, settings, args) -> None:
    from fsr_core.restore.costs import STEPS

    print(f"\narchive: {args.images} astronaut images (256-384 px, one face each), detector {settings.detector}, "
          f"L2H channels={args.channels} x8, {args.forward_batch} face(s) per forward, crops written (no paste-back); "
          f"pipeline runs warm, {args.num_actors} model actor(s)")
    print_costs(runs, STEPS)
    print_processes(runs)
    loop = runs["loop (1 core)"]
    loop_rate = loop["faces"] / loop["seconds"]
    print(f"\n{'':22}{'faces':>8}{'seconds':>10}{'faces/s':>10}{'bound':>10}{'of bound':>10}{'vs loop':>10}")
    for name, run in runs.items():
        rate = run["faces"] / run["seconds"]
        bound = run["cpus"] * run["faces"] / max(sum(run["steps"].values()), 1e-9)
        print(f"{name:22}{run['faces']:>8}{run['seconds']:>10.2f}{rate:>10.2f}{bound:>10.2f}{rate / bound:>10.2f}"
              f"{rate / loop_rate:>9.2f}x")
    for execution in args.executions:
        scaled = [run for name, run in runs.items() if name.startswith(execution + " ")]
        if len(scaled) > 1:
            first, last = scaled[0], scaled[-1]
            print(f"{execution}: scaling {first['cpus']} -> {last['cpus']} CPUs "
                  f"{(last['faces'] / last['seconds']) / (first['faces'] / first['seconds']):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--warmup-images", type=int, default=24)
    parser.add_argument("--unit-size", type=int, default=8)
    parser.add_argument("--channels", type=int, default=16, help="L2H width (the tests use 8)")
    parser.add_argument("--forward-batch", type=int, default=1,
                        help="faces per network forward, the loop's and the pipeline's")
    parser.add_argument("--video-seconds", type=float, default=60.0)
    parser.add_argument("--video-height", type=int, default=720)
    parser.add_argument("--skip-video", action="store_true")
    parser.add_argument("--skip-images", action="store_true")
    parser.add_argument("--sample-fps", type=float, default=1.0)
    parser.add_argument("--cpus", default="1,2", help="Ray CPUs (and cores) of each pipeline run")
    parser.add_argument("--num-actors", type=int, default=1)
    parser.add_argument("--executions", default="fused,staged",
                        help="restore_archive executions to run (fused: one task per unit; staged: detect tasks -> "
                             "model actor pool -> write tasks)")
    args = parser.parse_args()
    args.cpus = [int(c) for c in args.cpus.split(",")]
    args.executions = args.executions.split(",")
    if max(args.cpus) > len(os.sched_getaffinity(0)):
        parser.error(f"--cpus {max(args.cpus)} > the {len(os.sched_getaffinity(0))} cores this process may use")

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (sys.path[0], os.environ.get("PYTHONPATH", "")) if p)

    from fsr_core.restore.archive import ArchiveSettings

    tmp = tempfile.mkdtemp(prefix="fsr-bench-restore-")
    tracking_uri = f"sqlite:///{tmp}/mlflow.db"
    model = register(tracking_uri, tmp, args.channels)
    images, warmup = os.path.join(tmp, "images"), os.path.join(tmp, "warmup")
    if not args.skip_images:
        make_images(images, args.images)
        make_images(warmup, args.warmup_images)
    settings = ArchiveSettings(input_size=16, sample_fps=args.sample_fps)  # the default detector

    if args.skip_images:
        args.executions = []
    runs = {"loop (1 core)": run_loop(images, os.path.join(tmp, "loop"), model, tracking_uri, settings,
                                      args.forward_batch)} if args.executions else {}
    for execution in args.executions:
        for cpus in args.cpus:
            runs[f"{execution} ({cpus} CPU{'s' if cpus > 1 else ''})"] = run_pipeline(
                images, warmup, os.path.join(tmp, f"out-{execution}-{cpus}"), model, tracking_uri, settings, args, cpus,
                execution)
    memory = {} if args.skip_video else video_memory(tmp, model, tracking_uri, settings, args)

    if runs:
        print_images(runs, settings, args)
    if memory:
        print(f"\nvideo {args.video_height}p @10 fps sampled at {args.sample_fps:g} fps, paste-back + encode, "
              f"{max(args.cpus)} CPUs")
        print(f"{'':34}{'faces':>8}{'seconds':>10}{'workers MiB':>13}{'largest MiB':>13}{'driver MiB':>12}")
        mib = 1 << 20
        for name in memory:
            faces, seconds, workers, driver, units, largest = memory[name]
            label = f"{name} ({args.video_seconds * (1 if name == 'short' else 10):g} s, {units} unit(s))"
            print(f"{label:34}{faces:>8}{seconds:>10.2f}{workers / mib:>13.0f}{largest / mib:>13.0f}"
                  f"{driver / mib:>12.0f}")
        for name in ("long", "long, chunked"):
            print(f"peak RSS ratio {name} / short: workers {memory[name][2] / memory['short'][2]:.2f}, "
                  f"largest worker {memory[name][5] / memory['short'][5]:.2f}, "
                  f"driver {memory[name][3] / memory['short'][3]:.2f}")
        print("(workers: the sum over ray:: processes, which grows with the units running side by side, at most "
              "one per CPU; largest: the biggest one process, what a longer video would make grow)")


if __name__ == "__main__":
    main()
