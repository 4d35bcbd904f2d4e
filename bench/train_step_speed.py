"""Seconds per training step of one pipeline stage's objective at each precision and memory format,
side by side in one run: fp32 | bf16 autocast, NCHW | channels-last networks (``TrainingParams``
``precision`` and ``channels_last``; :func:`fsr_core.training.loop.autocast`,
:func:`~fsr_core.training.loop.to_channels_last`, the calls the training loop makes).

The objective is built exactly as the stage builds it, from the pipeline's resolved configuration
(default: the demo's ``joint`` stage, the two-step H2L + L2H), and stepped in this process on random
images of the stage's data sizes (the step's cost does not depend on the pixels); the four
settings take turns, ``--repeats`` rounds, after two warm-up steps each. Also prints the largest
difference of the four settings' first-step losses from fp32's, to show that bf16 changes
numbers (it is a different training run, whose quality the 3-seed studies measure), not only speed.

    .venv/bin/python bench/train_step_speed.py [--pipeline demo] [--stage joint] [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _objective(stage, params, *, seed: int):
    import torch

    objective_cls = stage.fn.keywords["objective"]
    kwargs = params.objective_kwargs()
    torch.manual_seed(seed)
    data_info = {name: {"rows": 1024, "num_identities": 16} for name in objective_cls.datasets(kwargs)}
    return objective_cls(**kwargs, device="cpu", data_info=data_info)


def _batch(objective_cls, kwargs, batch_size: int, *, seed: int):
    import torch

    generator = torch.Generator().manual_seed(seed)
    batch = {}
    for name, spec in objective_cls.datasets(kwargs).items():
        images = torch.randint(0, 256, (batch_size, spec.size, spec.size, 3), dtype=torch.uint8, generator=generator)
        from fsr_core.training.loop import to_float_images

        columns = {"image": to_float_images(images)}  # NHWC-strided, as the loop's batches are
        if "identity" in spec.columns:
            columns["identity"] = torch.randint(0, 16, (batch_size,), generator=generator)
        batch[name] = columns
    return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pipeline", default="demo")
    parser.add_argument("--stage", default="joint")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--conf-dir", default="conf")
    args = parser.parse_args()

    import torch

    from fsr_core.training.loop import autocast, to_channels_last
    from pipelines.config import load_config
    from pipelines.stages import stage_kinds

    torch.set_num_threads(args.threads)
    registry = stage_kinds()
    config = load_config(args.pipeline, registry=registry, conf_dir=args.conf_dir)
    spec, params = config.stage(args.stage), config.stage_params[args.stage]
    stage = registry[spec.uses]
    objective_cls = stage.fn.keywords["objective"]
    print(f"{args.pipeline}.{args.stage} ({spec.uses}, {objective_cls.__name__}), batch {params.batch_size}, "
          f"{args.threads} thread(s), {torch.backends.cpu.get_cpu_capability()}")

    settings = {(precision, cl): None for precision in ("fp32", "bf16") for cl in (False, True)}
    first_losses = {}
    for precision, cl in settings:
        objective = _objective(stage, params, seed=0)
        if cl:
            to_channels_last(objective)
        batch = _batch(objective_cls, params.objective_kwargs(), params.batch_size, seed=0)
        settings[(precision, cl)] = (objective, batch)
        with autocast(torch.device("cpu"), precision):
            first_losses[(precision, cl)] = objective.train_step(batch, step=0)
            objective.train_step(batch, step=1)
    seconds = dict.fromkeys(settings, 0.0)
    for _ in range(args.repeats):
        for (precision, cl), (objective, batch) in settings.items():
            start = time.perf_counter()
            with autocast(torch.device("cpu"), precision):
                objective.train_step(batch, step=2)
            seconds[(precision, cl)] += time.perf_counter() - start
    base = seconds[("fp32", False)] / args.repeats
    reference = first_losses[("fp32", False)]
    print(f"{'precision':10s}{'channels_last':>15s}{'s/step':>9s}{'speed-up':>10s}   max |first-step loss - fp32's|")
    for (precision, cl), total in seconds.items():
        mean = total / args.repeats
        diff = max(abs(first_losses[(precision, cl)][k] - reference[k]) / max(abs(reference[k]), 1e-12)
                   for k in reference)
        print(f"{precision:10s}{str(cl):>15s}{mean:9.3f}{base / mean:9.2f}x   {diff:.2%} (relative)")


if __name__ == "__main__":
    main()
