"""Throughput of batched inversion: one task inverting B faces against B single-face inversions.

    python bench/inversion_throughput.py [--batches 1,8,32] [--size 32] [--steps 20] [--space w]
        [--device cpu] [--threads 1] [--checkpoint PRIOR_CHECKPOINT] [--perceptual none] [--repeats 5]

For each B, side by side in one run, on the same generator (random weights of ``--size`` px with the
``--channels`` widths, or a ``stylegan2_prior`` checkpoint's EMA generator) and the same B targets
(images of the generator from random codes):

- **batched**: one :func:`~fsr_core.inversion.projection.project` of the B faces (one optimisation loop,
  per-face seeds; early stop off, so every face runs ``--steps``), faces/s;
- **singles**: B projections of one face each with the same seeds, faces/s;
- **bound**: the per-face time of a bare forward + backward of the generator and the loss at batch B
  (``--steps`` times: synthesis with per-face noise maps, downsampling, MSE + noise regulariser, backward
  to the code and the maps; no optimiser, schedule, latent noise, renormalisation or bookkeeping), as
  faces/s.

Each of the three is timed ``--repeats`` times, interleaved (batched, singles, bound, batched, ...), and
the median is printed (one 20-step projection at 32 px lasts a quarter of a second: a single timing
swings by 5-10% with the machine's other work). Prints per B: the three throughputs, batched /
singles, and the batched per-face time over the bound's (what batching, per-face early stopping and
bookkeeping cost beyond the network itself). On a GPU give
``--device cuda`` (``--size 1024 --channels default --steps 1000`` for seconds per face at the paper's
resolution and step count). Tests never assert on these times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _generator(args):
    from fsr_core.networks.stylegan2 import Generator

    if args.checkpoint:
        from fsr_core.inversion.batch import load_checkpoint_network

        return load_checkpoint_network(args.checkpoint, "generator", ema=True, device=args.device)
    torch.manual_seed(0)
    channels = None if args.channels == "default" else [int(c) for c in args.channels.split(",")]
    generator = Generator(size=args.size, style_dim=args.style_dim, n_mlp=args.n_mlp, channels=channels)
    return generator.to(args.device).eval().requires_grad_(False)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _bound(generator, target, *, steps: int, device: str) -> float:
    """Seconds of ``steps`` bare forward + backward passes at the target's batch."""
    from fsr_core.inversion.projection import downsample, noise_regularisation, noise_shapes, synthesise

    code = generator.style(torch.randn(len(target), generator.style_dim, device=device)).detach().requires_grad_(True)
    noises = [torch.randn(len(target), *s[1:], device=device).requires_grad_(True) for s in noise_shapes(generator)]
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        image = downsample(synthesise(generator, code, noises), target.shape[-1])
        loss = (image - target).pow(2).mean(dim=(1, 2, 3)) + 1e5 * noise_regularisation(noises)
        loss.sum().backward()
        code.grad = None
        for noise in noises:
            noise.grad = None
    _sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--channels", default="64,64,32,32", help="widths at 4 ... size px, or 'default'")
    parser.add_argument("--style-dim", type=int, default=64)
    parser.add_argument("--n-mlp", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--space", choices=("w", "w_plus"), default="w")
    parser.add_argument("--perceptual", choices=("none", "dlib"), default="none")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoint", default=None, help="a stylegan2_prior checkpoint instead of random weights")
    parser.add_argument("--repeats", type=int, default=5, help="timings of each, interleaved; the median is printed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from fsr_core.inversion.distances import make_distance
    from fsr_core.inversion.latent import latent_statistics
    from fsr_core.inversion.projection import project, synthesise

    generator = _generator(args)
    stats = latent_statistics(generator, samples=2000, seed=0)
    distance = make_distance(args.perceptual, device=args.device)
    settings = dict(space=args.space, steps=args.steps, distance=distance, perceptual=1.0 if distance else 0.0,
                    statistics=stats)
    print(f"generator {generator.size} px, style_dim {generator.style_dim}, {args.space}, {args.steps} steps, "
          f"perceptual {args.perceptual}, device {args.device}, torch threads {torch.get_num_threads()}")
    print(f"{'B':>4} {'batched f/s':>12} {'singles f/s':>12} {'bound f/s':>10} {'batched/singles':>16} "
          f"{'batched/bound time':>19}")
    project(generator, synthesise(generator, stats["w_mean"].expand(1, -1), None), seeds=[0], **{**settings,
                                                                                               "steps": 2})  # warm-up
    for b in [int(x) for x in args.batches.split(",")]:
        with torch.no_grad():
            codes = generator.style(torch.randn(b, generator.style_dim, generator=torch.Generator().manual_seed(b))
                                    .to(args.device))
            target = synthesise(generator, codes, None)
        seeds = list(range(b))
        times: dict[str, list[float]] = {"batched": [], "singles": [], "bound": []}
        for _ in range(args.repeats):
            _sync(args.device)
            start = time.perf_counter()
            project(generator, target, seeds=seeds, **settings)
            _sync(args.device)
            times["batched"].append(time.perf_counter() - start)
            start = time.perf_counter()
            for i in range(b):
                project(generator, target[i:i + 1], seeds=[seeds[i]], **settings)
            _sync(args.device)
            times["singles"].append(time.perf_counter() - start)
            times["bound"].append(_bound(generator, target, steps=args.steps, device=args.device))
        batched, singles, bound = (statistics.median(times[k]) for k in ("batched", "singles", "bound"))
        print(f"{b:>4} {b / batched:>12.2f} {b / singles:>12.2f} {b / bound:>10.2f} {singles / batched:>16.2f} "
              f"{batched / bound:>19.2f}")


if __name__ == "__main__":
    main()
