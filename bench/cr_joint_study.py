"""Study: what costs CR's phi_sr in stage 2 (the joint fine-tuning, Eq. 9)?

In the demo (``fsr run cr_demo``), stage 2 takes phi_sr about 1.2 dB below its stage-1 self on the
genuine camera LR. This study starts every variant from the *same* four stage-1 checkpoints (the
cached ones of a ``cr_demo`` run), runs :class:`~fsr_core.training.cr_objective.CRJointObjective`
in one process (no Ray) for the same steps on the same batches, and scores on the camera set's
test faces against their hidden ground truth (PSNR-Y / SSIM-Y at 64 px, border 4, the compare
stage's conventions):

- ``phi_sr``: stage 2's phi_sr on the genuine LR (the "without phi_cr" deployment);
- ``cr_sr``: phi_cr then phi_sr (the CR deployment);
- at step 0 the stage-1 networks, and bicubic, as references.

Variants switch one thing at a time (``VARIANTS``): each loss term off, the auxiliary branch through
phi_cr or not, the learning rate, the reading of ``||.||^2`` (``loss_reduction``). Each also reports
how close phi_cr(genuine LR) comes to the artificial LR of the same face (the bicubic downsample of
its ground truth): CR's premise, measured directly.

``--stage1`` trains phi_cr from scratch instead (``STAGE1_VARIANTS``, among them ``oracle_paired``: the
same network trained *paired* on the camera train split, a diagnostic of what a regulariser of this
size could give, not the method) and follows the same distance, and the stage-1 phi_sr through it
when ``--checkpoints`` names ``sr``.

Every variant is an MLflow run (experiment ``fsr-cr-joint-study``) with its settings, the loss
terms' curves and the scores every ``--eval-every`` steps. Findings: ``docs/cr-study.md``.

    .venv/bin/python bench/cr_joint_study.py --checkpoints '{"sr": CKPT, "regulariser": CKPT, "inverse": CKPT,
        "embedder": CKPT}' --hr HR_SHARDS --camera-hr CAMERA_HR --camera-lr CAMERA_LR --variants paper,sr_only
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch

from fsr_core.data.codec import decode_png
from fsr_core.degradation.resize import imresize
from fsr_core.metrics.psnr_ssim import psnr_y, ssim_y
from fsr_core.training.cr_objective import CRJointObjective

# the demo's networks (conf/pipelines/cr_demo.yaml)
NETWORKS = {
    "sr": {"channels": 16, "blocks_per_group": [4, 2, 1], "global_residual": True},
    "regulariser": {"channels": 16, "num_blocks": 3},
    "discriminator": {"channels": 16, "num_blocks": 6, "num_downsamples": 3, "max_channels": 64},
    "feature_discriminator": {"hidden": 64, "num_layers": 5},
    "embedder": {"input_size": 48, "embedding_dim": 64, "channels": [16, 32, 64]},
}
PAPER_LOSS = {"sr": 1.0, "cr": 0.06, "cr_sr": 0.01, "cr_gan": 0.03, "cr_cycle_gan": 0.2}

#: name -> overrides of the objective's arguments (``loss`` entries merged into the paper's weights)
VARIANTS: dict[str, dict] = {
    "paper": {},
    "no_semantic": {"loss": {"cr_gan": 0.0}},
    "no_consistency": {"loss": {"cr_sr": 0.0}},
    "no_cr": {"loss": {"cr": 0.0}},
    "sr_only": {"loss": {"cr": 0.0, "cr_sr": 0.0, "cr_gan": 0.0}},
    "sr_only_artificial": {"loss": {"cr": 0.0, "cr_sr": 0.0, "cr_gan": 0.0}, "sr_through_cr": False},
    "artificial": {"sr_through_cr": False},
    "lr1e-4": {"lr": 1e-4},
    "semantic_0.003": {"loss": {"cr_gan": 0.003}},
    # the paper's ||.||^2 read as sums over pixels (64x64x3 for L_sr, 16x16x3 in LR space) instead of
    # means: divided through by L_sr's 12288 elements, the LR terms weigh 1/16 and the GAN terms 1/12288
    "sum_reading": {"loss_reduction": "sum"},
    "sum_reading_lr1e-4": {"loss_reduction": "sum", "lr": 1e-4},
}


#: ``--stage1``: phi_cr trained from scratch (stage 1, Eq. 6 with the inverse as the identity) under
#: these overrides of :class:`~fsr_core.training.cr_objective.CRDomainObjective`'s arguments
STAGE1_VARIANTS: dict[str, dict] = {
    "demo": {},  # conf/pipelines/cr_demo.yaml: pixel 1, gan 0.2, mean, lr 5e-4
    "sum_reading": {"loss_reduction": "sum"},
    "gan_0.02": {"loss": {"pixel": 1.0, "gan": 0.02}},
    "gan_0.002": {"loss": {"pixel": 1.0, "gan": 0.002}},
    "lr1e-4": {"lr": 1e-4},
    # a diagnostic, not the method: phi_cr trained *paired* (genuine LR -> the artificial LR of the same
    # face, camera train split, L2 alone): what a perfect regulariser of this capacity would give phi_sr
    "oracle_paired": {"oracle": True},
}


def _tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _uint8(x: torch.Tensor) -> np.ndarray:
    return x.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).numpy()


def _scores(sr: np.ndarray, gt: np.ndarray, border: int) -> dict[str, float]:
    return {"psnr_y": float(np.mean([psnr_y(a, b, crop_border=border) for a, b in zip(sr, gt)])),
            "ssim_y": float(np.mean([ssim_y(a, b, crop_border=border) for a, b in zip(sr, gt)]))}


def load_sets(hr: str, camera_hr: str, camera_lr: str, *, hr_size: int) -> dict[str, np.ndarray]:
    """Training HR (128 px renders resized to ``hr_size``), genuine LR of the train split, and the
    camera test set (genuine LR, ground truth at ``hr_size``)."""
    from fsr_core.data.ray_datasets import paired_table
    from fsr_core.data.shards import read_faces

    def decode(pngs, size=None):
        images = [decode_png(b) for b in pngs]
        return np.stack([x if size is None or x.shape[0] == size else imresize(x, output_size=(size, size))
                         for x in images])

    import cv2

    # as the training stages' decoder (DecodeFaces): cv2 area resizing of the 128 px renders
    train_hr = np.stack([cv2.resize(x, (hr_size, hr_size), interpolation=cv2.INTER_AREA) for x in
                         decode(read_faces(hr, columns=["image_png"], split="train")["image_png"].to_pylist())])
    train_lr = decode(read_faces(camera_lr, columns=["image_png"], split="train")["image_png"].to_pylist())
    table, _ = paired_table(camera_lr, camera_hr, split="test")
    test_gt = decode(table["hr_png"].to_pylist(), hr_size)
    test_lr = decode(table["lr_png"].to_pylist())
    side = test_lr.shape[1]
    paired, _ = paired_table(camera_lr, camera_hr, split="train")  # the oracle diagnostic only
    return {"train_hr": train_hr, "train_lr": train_lr, "test_lr": test_lr, "test_gt": test_gt,
            "test_artificial": np.stack([imresize(x, output_size=(side, side)) for x in test_gt]),
            "paired_lr": decode(paired["lr_png"].to_pylist()),
            "paired_artificial": np.stack([imresize(x, output_size=(side, side))
                                           for x in decode(paired["hr_png"].to_pylist(), hr_size)])}


def evaluate(objective: CRJointObjective, sets: dict[str, np.ndarray], border: int) -> dict[str, float]:
    nets = objective.networks
    for net in nets.values():
        net.eval()
    with torch.no_grad():
        lr = _tensor(sets["test_lr"])
        plain = _uint8(nets["sr"](lr))
        regulated = nets["cr"](lr)
        through = _uint8(nets["sr"](regulated))
    for name in objective.trained:
        nets[name].train()
    out = {f"phi_sr_{k}": v for k, v in _scores(plain, sets["test_gt"], border).items()}
    # does phi_cr bring genuine LR toward the artificial LR of the same face (what phi_sr was trained on)?
    out["regulated_vs_artificial_psnr_y"] = float(np.mean([psnr_y(a, b, crop_border=0) for a, b in
                                                           zip(_uint8(regulated), sets["test_artificial"])]))
    out.update({f"cr_sr_{k}": v for k, v in _scores(through, sets["test_gt"], border).items()})
    return out


def build(variant: dict, checkpoints: dict[str, str], *, lr: float) -> CRJointObjective:
    from fsr_core.training.checkpoint import load_networks

    kwargs = {**copy.deepcopy(NETWORKS), "loss": {**PAPER_LOSS, **variant.get("loss", {})},
              "sr_through_cr": variant.get("sr_through_cr", True), "lr": variant.get("lr", lr),
              "loss_reduction": variant.get("loss_reduction", "mean"),
              "face_features": "embedder"}
    objective = CRJointObjective(**kwargs)
    for target, (stage, name) in {"sr": ("sr", "sr"), "cr": ("regulariser", "cr"),
                                  "cr_disc": ("regulariser", "cr_disc"), "inverse": ("inverse", "inverse"),
                                  "embedder": ("embedder", "embedder")}.items():
        source = load_networks(checkpoints[stage], names=[name])[name]
        objective.networks[target].load_state_dict(source.state_dict())
    return objective


def stage1(args, sets: dict[str, np.ndarray], checkpoints: dict[str, str]) -> dict:
    """Train phi_cr from scratch under each of ``--variants`` (:data:`STAGE1_VARIANTS`) and follow
    how close phi_cr(genuine LR) comes to the artificial LR of the same face (PSNR-Y, test faces)."""
    from fsr_core.training.cr_objective import CRDomainObjective

    results = {}
    for name in args.variants.split(","):
        variant = STAGE1_VARIANTS[name]
        torch.manual_seed(args.seed)
        objective = CRDomainObjective(direction="regulariser", regulariser=NETWORKS["regulariser"],
                                      discriminator=NETWORKS["discriminator"], lr=variant.get("lr", args.lr),
                                      loss=variant.get("loss"), loss_reduction=variant.get("loss_reduction", "mean"))
        rng = np.random.default_rng(args.seed)
        net = objective.networks["cr"]
        optimizer = torch.optim.Adam(net.parameters(), lr=variant.get("lr", args.lr)) if variant.get("oracle") else None
        sr = None
        if checkpoints.get("sr"):
            from fsr_core.training.checkpoint import load_networks

            sr = load_networks(checkpoints["sr"], names=["sr"])["sr"].eval()
        curve, sr_curve = {}, {}
        for step in range(0, args.steps + 1):
            if step and optimizer is not None:
                pick = rng.integers(0, len(sets["paired_lr"]), args.batch_size)
                loss = torch.mean((net(_tensor(sets["paired_lr"][pick])) - _tensor(sets["paired_artificial"][pick])) ** 2)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            elif step:
                hr = sets["train_hr"][rng.integers(0, len(sets["train_hr"]), args.batch_size)]
                lr = sets["train_lr"][rng.integers(0, len(sets["train_lr"]), args.batch_size)]
                objective.train_step({"hr": {"image": _tensor(hr)}, "real_lr": {"image": _tensor(lr)}}, step=step)
            if step % args.eval_every == 0 or step == args.steps:
                net.eval()
                with torch.no_grad():
                    regulated_t = net(_tensor(sets["test_lr"]))
                    regulated = _uint8(regulated_t)
                    if sr is not None:  # the stage-1 phi_sr through this phi_cr
                        sr_curve[step] = _scores(_uint8(sr(regulated_t)), sets["test_gt"], 4)["psnr_y"]
                net.train()
                curve[step] = float(np.mean([psnr_y(a, b, crop_border=0)
                                             for a, b in zip(regulated, sets["test_artificial"])]))
        results[name] = {"regulated_vs_artificial": curve, "stage1_sr_through_cr_psnr_y": sr_curve}
        print(f"stage 1 {name:14s} phi_cr(genuine) vs artificial: "
              + "  ".join(f"{k}: {v:.2f}" for k, v in curve.items())
              + ("   phi_sr(phi_cr(genuine)): " + "  ".join(f"{k}: {v:.2f}" for k, v in sr_curve.items())
                 if sr_curve else ""), flush=True)
        if args.tracking_uri:
            import mlflow

            with mlflow.start_run(run_name=f"stage1_{name}_seed{args.seed}"):
                mlflow.log_params({"stage": 1, "variant": name, "overrides": json.dumps(variant),
                                   "steps": args.steps, "seed": args.seed})
                for step, value in curve.items():
                    mlflow.log_metric("regulated_vs_artificial_psnr_y", value, step=step)
                for step, value in sr_curve.items():
                    mlflow.log_metric("stage1_sr_through_cr_psnr_y", value, step=step)
    return results


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", default=None,
                   help="JSON {sr, regulariser, inverse, embedder: checkpoint folder} of one cr_demo run")
    p.add_argument("--hr", required=True, help="the auxiliary HR shards (synthetic_faces)")
    p.add_argument("--camera-hr", required=True)
    p.add_argument("--camera-lr", required=True)
    p.add_argument("--variants", default=None,
                   help="comma-separated names of VARIANTS (or STAGE1_VARIANTS with --stage1); default: all")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4, help="the demo's rate (variants may override)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--stage1", action="store_true",
                   help="train phi_cr from scratch under --variants of STAGE1_VARIANTS instead (no checkpoints)")
    args = p.parse_args(argv)

    args.variants = args.variants or ",".join(STAGE1_VARIANTS if args.stage1 else VARIANTS)
    torch.set_num_threads(args.threads)
    checkpoints = json.loads(args.checkpoints) if args.checkpoints else {}
    sets = load_sets(args.hr, args.camera_hr, args.camera_lr, hr_size=64)
    border = 4
    bicubic = np.stack([imresize(x, output_size=(64, 64)) for x in sets["test_lr"]])
    reference = {"bicubic": _scores(bicubic, sets["test_gt"], border),
                 "genuine_vs_artificial": {"psnr_y": float(np.mean([psnr_y(a, b, crop_border=0) for a, b in
                                                                     zip(sets["test_lr"], sets["test_artificial"])]))}}
    print(f"{len(sets['train_hr'])} HR / {len(sets['train_lr'])} genuine LR for training, "
          f"{len(sets['test_lr'])} test faces; bicubic {reference['bicubic']}; genuine LR vs the artificial LR "
          f"of the same face {reference['genuine_vs_artificial']['psnr_y']:.2f} dB")
    if args.tracking_uri:
        import mlflow

        mlflow.set_tracking_uri(args.tracking_uri)
        mlflow.set_experiment("fsr-cr-joint-study")
    if args.stage1:
        return {"reference": reference, "stage1": stage1(args, sets, checkpoints)}
    missing = {"sr", "regulariser", "inverse", "embedder"} - set(checkpoints)
    if missing:
        p.error(f"--checkpoints must name {sorted(missing)} (a cr_demo run's stage-1 checkpoint folders)")
    results = {}
    for name in args.variants.split(","):
        variant = VARIANTS[name]
        torch.manual_seed(args.seed)  # D' (not in any checkpoint) starts from the seed's weights
        objective = build(variant, checkpoints, lr=args.lr)
        rng = np.random.default_rng(args.seed)  # the same batches for every variant
        curve = {0: evaluate(objective, sets, border)}
        losses: dict[str, list[float]] = {}
        start = time.perf_counter()
        for step in range(1, args.steps + 1):
            hr = sets["train_hr"][rng.integers(0, len(sets["train_hr"]), args.batch_size)]
            lr = sets["train_lr"][rng.integers(0, len(sets["train_lr"]), args.batch_size)]
            out = objective.train_step({"hr": {"image": _tensor(hr)}, "real_lr": {"image": _tensor(lr)}}, step=step)
            for key, value in out.items():
                losses.setdefault(key, []).append(float(value))
            if step % args.eval_every == 0 or step == args.steps:
                curve[step] = evaluate(objective, sets, border)
        seconds = time.perf_counter() - start
        results[name] = {"curve": curve, "seconds_per_step": seconds / args.steps,
                         "mean_losses_last50": {k: float(np.mean(v[-50:])) for k, v in losses.items()}}
        final = curve[args.steps]
        print(f"{name:22s} phi_sr {curve[0]['phi_sr_psnr_y']:.2f} -> {final['phi_sr_psnr_y']:.2f} dB "
              f"/ {final['phi_sr_ssim_y']:.4f}   cr_sr {curve[0]['cr_sr_psnr_y']:.2f} -> {final['cr_sr_psnr_y']:.2f} dB "
              f"/ {final['cr_sr_ssim_y']:.4f}   phi_cr(genuine) vs artificial {curve[0]['regulated_vs_artificial_psnr_y']:.2f}"
              f" -> {final['regulated_vs_artificial_psnr_y']:.2f} dB   ({seconds / args.steps:.2f} s/step)", flush=True)
        if args.tracking_uri:
            import mlflow

            with mlflow.start_run(run_name=f"{name}_seed{args.seed}"):
                mlflow.log_params({"variant": name, "overrides": json.dumps(variant), "steps": args.steps,
                                   "batch_size": args.batch_size, "lr": variant.get("lr", args.lr), "seed": args.seed,
                                   "checkpoints": json.dumps(checkpoints)})
                for key, values in losses.items():
                    for i in range(0, len(values), 5):
                        mlflow.log_metric(f"loss_{key}", values[i], step=i + 1)
                for step, scores in curve.items():
                    mlflow.log_metrics(scores, step=step)
                mlflow.log_metrics({f"bicubic_{k}": v for k, v in reference["bicubic"].items()})
                mlflow.log_metric("genuine_vs_artificial_psnr_y", reference["genuine_vs_artificial"]["psnr_y"])
                mlflow.log_text(json.dumps(results[name], indent=1), "study.json")
    return {"reference": reference, "variants": results}


if __name__ == "__main__":
    main()
