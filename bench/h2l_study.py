"""Study: does the two-step H2L learn a genuine degradation, and what keeps it at bicubic?

One process, no Ray, the project's own objective (:class:`TwoStepObjective`) and networks, the
demo world's faces: HR renders for training, a *camera* set of other identities degraded by a
degradation chain (``--chain``, a YAML/JSON file or the demo's camera chain) whose ground truth is
used only to score. For each seed it pre-trains L2H on bicubic pairs once (cached), then runs
each variant from that checkpoint for the same number of steps and scores the L2H on the camera
set's test faces against their ground truth (PSNR/SSIM-Y, BasicSR conventions), beside:

- ``bicubic_more``: the same number of extra supervised steps on bicubic pairs (the control);
- ``oracle``: the same number of extra supervised steps on pairs made with the true chain.

Every variant is an MLflow run (experiment ``fsr-h2l-study``) with its settings as params, the
loss curves, the scores, and how far H2L's output is from the bicubic downsampling (PSNR) and
how much high-frequency energy it has against the genuine LR's.

    .venv/bin/python bench/h2l_study.py --seeds 0 --variants paper,skip,skip_gan01
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import numpy as np
import torch

from fsr_core.data.codec import decode_png
from fsr_core.data.demo_world import synthetic_face_rows
from fsr_core.degradation.resize import imresize
from fsr_core.metrics.psnr_ssim import psnr_y, ssim_y
from fsr_core.training.two_step_objective import TwoStepObjective
from fsr_core.training.loop import autocast, to_channels_last

L2H = {"channels": 16, "blocks_per_section": [2, 2, 1, 1], "reduction": 4, "global_residual": True}
L2H_DISC = {"channels": 16, "max_channels": 64}
H2L = {"channels": 16, "noise_dim": 16, "reduction": 4, "global_residual": True, "input_size": 128}
H2L_DISC = {"channels": 16, "max_channels": 64}

VARIANTS: dict[str, dict] = {
    "paper": {},
    "skip": {"h2l": {"skip_connections": True}},
    "skip_gan01": {"h2l": {"skip_connections": True}, "h2l_loss": {"pixel": 1.0, "gan": 0.01}},
    "skip_gan05": {"h2l": {"skip_connections": True}, "h2l_loss": {"pixel": 1.0, "gan": 0.05}},
    "gan05": {"h2l_loss": {"pixel": 1.0, "gan": 0.05}},
    # the L2H's own adversarial term off (pixel-only L2H, as in the demo's pre-training)
    "skip_gan05_l2hpix": {"h2l": {"skip_connections": True}, "h2l_loss": {"pixel": 1.0, "gan": 0.05},
                          "objective": {"l2h_loss": {"pixel": 1.0, "gan": 0.0}}},
    # ... and H2L learns from its own terms only (Bulat et al. 2018: no gradient from L2H into H2L)
    "sep": {"h2l": {"skip_connections": True}, "h2l_loss": {"pixel": 1.0, "gan": 0.05},
            "objective": {"l2h_loss": {"pixel": 1.0, "gan": 0.0}, "end_to_end": False}},
    # ... and the H2L pixel term on low-passed images only
    "sep_lowpass": {"h2l": {"skip_connections": True}, "h2l_loss": {"pixel": 1.0, "gan": 0.05},
                    "objective": {"l2h_loss": {"pixel": 1.0, "gan": 0.0}, "end_to_end": False,
                                  "h2l_pixel_lowpass": 1.0}},
    "e2e_lowpass": {"h2l": {"skip_connections": True}, "h2l_loss": {"pixel": 1.0, "gan": 0.05},
                    "objective": {"l2h_loss": {"pixel": 1.0, "gan": 0.0}, "h2l_pixel_lowpass": 1.0}},
    # per-pixel noise injection (StyleGAN style) in H2L, with the winners above
    "noise_e2e_lowpass": {"h2l": {"skip_connections": True, "pixel_noise": True},
                          "h2l_loss": {"pixel": 1.0, "gan": 0.05},
                          "objective": {"l2h_loss": {"pixel": 1.0, "gan": 0.0}, "h2l_pixel_lowpass": 1.0}},
    "noise_sep_lowpass": {"h2l": {"skip_connections": True, "pixel_noise": True},
                          "h2l_loss": {"pixel": 1.0, "gan": 0.05},
                          "objective": {"l2h_loss": {"pixel": 1.0, "gan": 0.0}, "end_to_end": False,
                                        "h2l_pixel_lowpass": 1.0}},
    # ... and a stronger adversarial term
    "noise_sep_lowpass_gan2": {"h2l": {"skip_connections": True, "pixel_noise": True},
                               "h2l_loss": {"pixel": 1.0, "gan": 0.2},
                               "objective": {"l2h_loss": {"pixel": 1.0, "gan": 0.0}, "end_to_end": False,
                                             "h2l_pixel_lowpass": 1.0}},
    # the H2L discriminator at the paper's width (64 channels) instead of the demo's 16
    "noise_e2e_lowpass_d64": {"h2l": {"skip_connections": True, "pixel_noise": True},
                              "h2l_disc": {"channels": 64, "max_channels": 256},
                              "h2l_loss": {"pixel": 1.0, "gan": 0.05},
                              "objective": {"l2h_loss": {"pixel": 1.0, "gan": 0.0}, "h2l_pixel_lowpass": 1.0}},
    # ... and trained alone on real LR vs the initial H2L's output first (``disc_warmup`` steps)
    "noise_e2e_lowpass_d64_warm": {"h2l": {"skip_connections": True, "pixel_noise": True},
                                   "h2l_disc": {"channels": 64, "max_channels": 256},
                                   "h2l_loss": {"pixel": 1.0, "gan": 0.05}, "disc_warmup": 100,
                                   "objective": {"l2h_loss": {"pixel": 1.0, "gan": 0.0},
                                                 "h2l_pixel_lowpass": 1.0}},
    "noise_e2e_lowpass_warm": {"h2l": {"skip_connections": True, "pixel_noise": True},
                               "h2l_loss": {"pixel": 1.0, "gan": 0.05}, "disc_warmup": 100,
                               "objective": {"l2h_loss": {"pixel": 1.0, "gan": 0.0}, "h2l_pixel_lowpass": 1.0}},
    # the H2L discriminator sees only the high band (x - Gaussian(x), sigma in LR px), as in
    # Fritsche et al. 2019's frequency separation: the low band is left to the pixel term
    "hp": {"h2l": {"skip_connections": True, "pixel_noise": True}, "h2l_loss": {"pixel": 1.0, "gan": 0.05},
           "objective": {"l2h_loss": {"pixel": 1.0, "gan": 0.0}, "h2l_pixel_lowpass": 1.0, "h2l_disc_highpass": 1.0}},
    "hp_gan02": {"h2l": {"skip_connections": True, "pixel_noise": True}, "h2l_loss": {"pixel": 1.0, "gan": 0.2},
                 "objective": {"l2h_loss": {"pixel": 1.0, "gan": 0.0}, "h2l_pixel_lowpass": 1.0,
                               "h2l_disc_highpass": 1.0}},
    "hp_d64_warm": {"h2l": {"skip_connections": True, "pixel_noise": True},
                    "h2l_disc": {"channels": 64, "max_channels": 256}, "disc_warmup": 100,
                    "h2l_loss": {"pixel": 1.0, "gan": 0.05},
                    "objective": {"l2h_loss": {"pixel": 1.0, "gan": 0.0}, "h2l_pixel_lowpass": 1.0,
                                  "h2l_disc_highpass": 1.0}},
    "hp_d64_warm_gan01": {"h2l": {"skip_connections": True, "pixel_noise": True},
                          "h2l_disc": {"channels": 64, "max_channels": 256}, "disc_warmup": 100,
                          "h2l_loss": {"pixel": 1.0, "gan": 0.01},
                          "objective": {"l2h_loss": {"pixel": 1.0, "gan": 0.0}, "h2l_pixel_lowpass": 1.0,
                                        "h2l_disc_highpass": 1.0}},
    "hp_d64_sep_gan01": {"h2l": {"skip_connections": True, "pixel_noise": True},
                         "h2l_disc": {"channels": 64, "max_channels": 256},
                         "h2l_loss": {"pixel": 1.0, "gan": 0.01},
                         "objective": {"l2h_loss": {"pixel": 1.0, "gan": 0.0}, "h2l_pixel_lowpass": 1.0,
                                       "h2l_disc_highpass": 1.0, "end_to_end": False}},
    "hp_d64_gan01": {"h2l": {"skip_connections": True, "pixel_noise": True},
                     "h2l_disc": {"channels": 64, "max_channels": 256},
                     "h2l_loss": {"pixel": 1.0, "gan": 0.01},
                     "objective": {"l2h_loss": {"pixel": 1.0, "gan": 0.0}, "h2l_pixel_lowpass": 1.0,
                                   "h2l_disc_highpass": 1.0}},
    "hp_d64_gan01_lr2": {"h2l": {"skip_connections": True, "pixel_noise": True},
                         "h2l_disc": {"channels": 64, "max_channels": 256},
                         "h2l_loss": {"pixel": 1.0, "gan": 0.01},
                         "objective": {"l2h_loss": {"pixel": 1.0, "gan": 0.0}, "h2l_pixel_lowpass": 1.0,
                                       "h2l_disc_highpass": 1.0, "h2l_lr": 2e-4}},
    "hp_d64_gan05_lr2": {"h2l": {"skip_connections": True, "pixel_noise": True},
                         "h2l_disc": {"channels": 64, "max_channels": 256},
                         "h2l_loss": {"pixel": 1.0, "gan": 0.05},
                         "objective": {"l2h_loss": {"pixel": 1.0, "gan": 0.0}, "h2l_pixel_lowpass": 1.0,
                                       "h2l_disc_highpass": 1.0, "h2l_lr": 2e-4}},
    "noise_sep": {"h2l": {"skip_connections": True, "pixel_noise": True},
                  "h2l_loss": {"pixel": 1.0, "gan": 0.05},
                  "objective": {"l2h_loss": {"pixel": 1.0, "gan": 0.0}, "end_to_end": False}},
}


def _faces(identities, *, seed, renders=4):
    rows = list(synthetic_face_rows(identities, renders_per_identity=renders, size=128, seed=seed,
                                    split_fractions={"train": 0.8, "val": 0.1, "test": 0.1}))
    return np.stack([decode_png(r["image_png"]) for r in rows]), [r["split"] for r in rows], [r["id"] for r in rows]


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _to_images(x: torch.Tensor) -> np.ndarray:
    return x.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).numpy()


def _score(l2h, lr: np.ndarray, hr: np.ndarray) -> dict[str, float]:
    with torch.no_grad():
        sr = _to_images(l2h(_to_tensor(lr)))
    return {"psnr_y": float(np.mean([psnr_y(a, b, crop_border=8) for a, b in zip(sr, hr)])),
            "ssim_y": float(np.mean([ssim_y(a, b, crop_border=8) for a, b in zip(sr, hr)]))}


def _highfreq(images: np.ndarray) -> float:
    """Mean absolute Laplacian of the luma (0-255): noise and compression raise it."""
    import cv2

    grey = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return float(np.mean([np.abs(cv2.Laplacian(g, cv2.CV_32F)).mean() for g in grey]))


def _merge(base: dict, extra: dict) -> dict:
    return {**base, **extra}


def _objective(mode: str, variant: dict, *, seed: int) -> TwoStepObjective:
    torch.manual_seed(seed)
    kwargs = dict(mode=mode, l2h=L2H, l2h_disc=L2H_DISC, hr_size=128, scale=8)
    if mode == "supervised":
        kwargs["l2h_loss"] = {"pixel": 1.0, "gan": 0.0}
    else:
        kwargs.update(h2l=_merge(H2L, variant.get("h2l", {})), h2l_disc=_merge(H2L_DISC, variant.get("h2l_disc", {})),
                      l2h_loss={"pixel": 1.0, "gan": 0.001}, h2l_loss=variant.get("h2l_loss", {"pixel": 1.0, "gan": 0.001}))
        kwargs.update(variant.get("objective", {}))
    return TwoStepObjective(**kwargs)


def _batches(n: int, batch: int, rng: np.random.Generator):
    while True:
        order = rng.permutation(n)
        for start in range(0, n - batch + 1, batch):
            yield order[start:start + batch]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--variants", default="paper,skip")
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--chain", default="conf/degradations/camera.yaml")
    parser.add_argument("--oracle-chain", default="",
                        help="the chain the oracle's pairs are made with (default: --chain): ablates what the L2H must learn")
    parser.add_argument("--cache", default="/tmp/h2l_study")
    parser.add_argument("--tracking-uri", default=f"sqlite:///{os.path.abspath('fsr-work/mlflow.db')}")
    parser.add_argument("--ema", default="",
                        help="also score exponential moving averages of the L2H weights with these decays (comma "
                             "list, one run keeps them all; the first is reported as ema_*, each as ema<decay>_psnr_y)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="autocast of every training step, as the training loop's precision")
    parser.add_argument("--channels-last", action="store_true", help="networks in channels-last memory format")
    parser.add_argument("--eval-every", type=int, default=0, help="score L2H and H2L every N joint steps")
    parser.add_argument("--controls", default="bicubic_more,oracle")
    args = parser.parse_args()
    import mlflow
    import yaml

    from fsr_core.degradation.ops import degrade_crop, load_chain

    torch.set_num_threads(2)
    os.makedirs(args.cache, exist_ok=True)
    chain = load_chain(yaml.safe_load(open(args.chain)))
    oracle_chain = load_chain(yaml.safe_load(open(args.oracle_chain))) if args.oracle_chain else chain
    mlflow.set_tracking_uri(args.tracking_uri)
    mlflow.set_experiment("fsr-h2l-study")

    hr, split, _ = _faces(range(120), seed=0)
    hr_train = hr[[s == "train" for s in split]]
    cam_hr, cam_split, cam_ids = _faces(range(100000, 100120), seed=0)
    cam_lr = np.stack([degrade_crop(img, chain, seed=0, key=i)[0] for img, i in zip(cam_hr, cam_ids)])
    cam_train = cam_lr[[s == "train" for s in cam_split]]
    test = [s == "test" for s in cam_split]
    test_lr, test_hr = cam_lr[test], cam_hr[test]
    bicubic_score = {"psnr_y": float(np.mean([psnr_y(imresize(a, output_size=(128, 128)), b, crop_border=8)
                                              for a, b in zip(test_lr, test_hr)]))}
    print(f"data: {len(hr_train)} HR train, {len(cam_train)} camera LR train, {len(test_lr)} camera test; "
          f"bicubic upsampling of camera LR {bicubic_score['psnr_y']:.2f} dB; chain: {chain.describe()}", flush=True)
    real_hf = _highfreq(cam_train)
    hr_t, cam_t = _to_tensor(hr_train), _to_tensor(cam_train)
    results = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        fast = "" if args.precision == "fp32" and not args.channels_last else f"-{args.precision}-cl{int(args.channels_last)}"
        path = os.path.join(args.cache, f"pretrain-{seed}-{args.pretrain_steps}{fast}.pt")
        pre = _objective("supervised", {}, seed=seed)
        if os.path.exists(path):
            pre.networks["l2h"].load_state_dict(torch.load(path)["l2h"])
            pre.networks["l2h_disc"].load_state_dict(torch.load(path)["l2h_disc"])
        else:
            rng = np.random.default_rng(seed)
            batches = _batches(len(hr_t), args.batch, rng)
            if args.channels_last:
                to_channels_last(pre)
            for step in range(args.pretrain_steps):
                with autocast(torch.device("cpu"), args.precision):
                    pre.train_step({"hr": {"image": hr_t[next(batches)]}}, step=step)
            torch.save({k: pre.networks[k].state_dict() for k in ("l2h", "l2h_disc")}, path)
        base = _score(pre.networks["l2h"], test_lr, test_hr)
        print(f"seed {seed}: pretrained L2H {base['psnr_y']:.2f} dB / {base['ssim_y']:.4f}", flush=True)
        names = [v for v in args.variants.split(",") if v] + [c for c in args.controls.split(",") if c]
        for name in names:
            t0 = time.time()
            rng = np.random.default_rng([seed, 7])
            hr_batches = _batches(len(hr_t), args.batch, rng)
            lr_batches = _batches(len(cam_t), args.batch, rng)
            curves: dict[str, list[float]] = {}
            trace: list[tuple[int, dict[str, float]]] = []  # (step, scores) every --eval-every steps
            if name in ("bicubic_more", "oracle"):
                obj = _objective("supervised", {}, seed=seed)
                obj.networks["l2h"].load_state_dict(pre.networks["l2h"].state_dict())
                obj.networks["l2h_disc"].load_state_dict(pre.networks["l2h_disc"].state_dict())
                opt = obj.optimizers["l2h"]
                for step in range(args.steps):
                    idx = next(hr_batches)
                    if name == "bicubic_more":
                        losses = obj.train_step({"hr": {"image": hr_t[idx]}}, step=step)
                    else:  # pairs made with the true chain (fresh per-step samples of its ranges)
                        lr = np.stack([degrade_crop(hr_train[i], oracle_chain, seed=step + 1, key=str(i))[0] for i in idx])
                        out = obj.networks["l2h"](_to_tensor(lr))
                        loss = torch.mean((out - hr_t[idx]) ** 2)
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
                        losses = {"l2h_pixel": float(loss.detach())}
                    for k, v in losses.items():
                        curves.setdefault(k, []).append(v)
                h2l_stats = {}
            else:
                variant = VARIANTS[name]
                obj = _objective("unsupervised", variant, seed=seed)
                obj.networks["l2h"].load_state_dict(pre.networks["l2h"].state_dict())
                obj.networks["l2h_disc"].load_state_dict(pre.networks["l2h_disc"].state_dict())
                disc, disc_opt = obj.networks["h2l_disc"], obj.optimizers["h2l_disc"]
                for step in range(variant.get("disc_warmup", 0)):  # the H2L discriminator alone, H2L frozen
                    with torch.no_grad():
                        fake = obj.networks["h2l"](hr_t[next(hr_batches)])
                    loss = obj._d_loss(disc(obj._h2l_disc_input(cam_t[next(lr_batches)])), disc(obj._h2l_disc_input(fake)))
                    disc_opt.zero_grad()
                    loss.backward()
                    disc_opt.step()
                    curves.setdefault("warmup_h2l_disc", []).append(float(loss.detach()))
                bic = np.stack([imresize(img, output_size=(16, 16)) for img in test_hr])

                def h2l_stats_now() -> dict[str, float]:
                    with torch.no_grad():
                        fake = _to_images(obj.networks["h2l"](_to_tensor(test_hr),
                                                              generator=torch.Generator().manual_seed(0)))
                    return {"h2l_vs_bicubic_psnr": float(np.mean([psnr_y(a, b) for a, b in zip(fake, bic)])),
                            "h2l_vs_true_psnr": float(np.mean([psnr_y(a, b) for a, b in zip(fake, test_lr)])),
                            "bicubic_vs_true_psnr": float(np.mean([psnr_y(a, b) for a, b in zip(bic, test_lr)])),
                            "h2l_highfreq": _highfreq(fake), "real_highfreq": real_hf, "bicubic_highfreq": _highfreq(bic)}

                if args.channels_last:
                    to_channels_last(obj)
                decays = [float(d) for d in args.ema.split(",") if d]
                emas = {d: copy.deepcopy(obj.networks["l2h"]).requires_grad_(False) for d in decays}
                ema = emas[decays[0]] if decays else None
                for step in range(args.steps):
                    with autocast(torch.device("cpu"), args.precision):
                        losses = obj.train_step({"hr": {"image": hr_t[next(hr_batches)]},
                                                 "real_lr": {"image": cam_t[next(lr_batches)]}}, step=step)
                    with torch.no_grad():
                        for decay, average in emas.items():
                            for a, b in zip(average.parameters(), obj.networks["l2h"].parameters()):
                                a.lerp_(b, 1.0 - decay)
                    for k, v in losses.items():
                        curves.setdefault(k, []).append(v)
                    if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
                        now = {**h2l_stats_now(), **_score(obj.networks["l2h"], test_lr, test_hr)}
                        if ema is not None:
                            now["ema_psnr_y"] = _score(ema, test_lr, test_hr)["psnr_y"]
                        for decay, average in list(emas.items())[1:]:
                            now[f"ema{decay:g}_psnr_y"] = _score(average, test_lr, test_hr)["psnr_y"]
                        trace.append((step + 1, now))
                        print(f"    step {step + 1}: L2H {now['psnr_y']:.2f} dB (average {now.get('ema_psnr_y', float('nan')):.2f}), "
                              f"H2L vs true {now['h2l_vs_true_psnr']:.2f}, "
                              f"high-freq {now['h2l_highfreq']:.1f}"
                              + "".join(f", {k[:-7]} {v:.2f}" for k, v in now.items() if k.startswith("ema0")), flush=True)
                h2l_stats = h2l_stats_now()
                if ema is not None:
                    ema_score = _score(ema, test_lr, test_hr)
                    h2l_stats.update({"ema_psnr_y": ema_score["psnr_y"], "ema_ssim_y": ema_score["ssim_y"],
                                      "ema_gain": ema_score["psnr_y"] - base["psnr_y"]})
                for decay, average in list(emas.items())[1:]:
                    h2l_stats[f"ema{decay:g}_gain"] = _score(average, test_lr, test_hr)["psnr_y"] - base["psnr_y"]
            score = _score(obj.networks["l2h"], test_lr, test_hr)
            gain = score["psnr_y"] - base["psnr_y"]
            results[(seed, name)] = {**score, "gain_vs_pretrained": gain, **h2l_stats}
            with mlflow.start_run(run_name=f"{name}-seed{seed}"):
                mlflow.log_params({"variant": name, "seed": seed, "steps": args.steps, "pretrain_steps": args.pretrain_steps,
                                   "settings": json.dumps(VARIANTS.get(name, {})),
                                   "oracle_chain": oracle_chain.describe()[:480], "chain": chain.describe()[:480]})
                for k, values in curves.items():
                    for step in range(0, len(values), 5):
                        mlflow.log_metric(k, float(np.mean(values[step:step + 5])), step=step)
                for step, now in trace:
                    mlflow.log_metrics({f"trace_{k}": v for k, v in now.items()}, step=step)
                mlflow.log_metrics({**results[(seed, name)], "pretrained_psnr_y": base["psnr_y"],
                                    "bicubic_psnr_y": bicubic_score["psnr_y"]})
            tail = {k: round(float(np.mean(v[-20:])), 4) for k, v in curves.items()}
            print(f"seed {seed} {name:14s} {score['psnr_y']:.2f} dB / {score['ssim_y']:.4f}  gain {gain:+.2f}  "
                  f"{ {k: round(v, 2) for k, v in h2l_stats.items()} }  losses {tail}  ({time.time() - t0:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
