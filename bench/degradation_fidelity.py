"""How close is a learned degradation to the genuine one? For any trained degradation network
(SelFSR's flow-field degrader, the two-step H2L, CR's inverse phi~_cr) on a genuine-LR set with
ground truth (the demo world's camera set: HR renders and their genuine LR, paired by
``meta.hr_id``).

Each HR crop of the split is brought to the LR size by MATLAB bicubic (the clean LR); the network
degrades it (the H2L takes the HR crop itself); both are set against the genuine LR of the same
face:

- ``psnr_y_lowpass``: PSNR-Y after a Gaussian blur (sigma 1 LR pixel) of both images — tone,
  colour and blur of the face, insensitive to where the noise grains fall;
- ``highfreq``: mean absolute Laplacian of the luma (0-255) — noise, compression and sharpness;
  the genuine LR's value is the target, the ratio ``highfreq_ratio`` = learned / genuine;
- ``psnr_y``: plain PSNR-Y (noise that does not fall on the same pixels costs here).

The same numbers for the clean bicubic LR are the baseline (what a bicubic-trained SR sees). One
MLflow run per call (experiment ``fsr-degradation-fidelity``), the numbers printed as a table.

    .venv/bin/python bench/degradation_fidelity.py --checkpoint CKPT --network degrader \\
        --hr HR_SHARDS --lr GENUINE_LR_SHARDS [--label selfsr_seed0] [--tracking-uri URI]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def _lowpass(images: np.ndarray) -> np.ndarray:
    import cv2

    return np.stack([cv2.GaussianBlur(x, (0, 0), 1.0) for x in images])


def _highfreq(images: np.ndarray) -> float:
    import cv2

    grey = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return float(np.mean([np.abs(cv2.Laplacian(g, cv2.CV_32F)).mean() for g in grey]))


def fidelity(candidate: np.ndarray, genuine: np.ndarray) -> dict[str, float]:
    """The three measures of ``candidate`` LR crops against the ``genuine`` ones (uint8 ``[N,s,s,3]``)."""
    from fsr_core.metrics.psnr_ssim import psnr_y

    return {
        "psnr_y": float(np.mean([psnr_y(a, b, crop_border=0) for a, b in zip(candidate, genuine)])),
        "psnr_y_lowpass": float(np.mean([psnr_y(a, b, crop_border=0)
                                         for a, b in zip(_lowpass(candidate), _lowpass(genuine))])),
        "highfreq": _highfreq(candidate),
        "highfreq_ratio": _highfreq(candidate) / max(_highfreq(genuine), 1e-9),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a training stage's checkpoint folder")
    p.add_argument("--network", required=True, help="the degradation network's name in it (degrader, h2l, inverse)")
    p.add_argument("--hr", required=True)
    p.add_argument("--lr", required=True, help="genuine LR shards paired with --hr by meta.hr_id")
    p.add_argument("--split", default="test")
    p.add_argument("--input", choices=("clean_lr", "hr"), default="clean_lr",
                   help="what the network takes: the bicubic LR (SelFSR, CR) or the HR crop (two-step H2L)")
    p.add_argument("--ema", action="store_true", help="the network's EMA weights")
    p.add_argument("--seed", type=int, default=0, help="torch seed (networks that sample noise)")
    p.add_argument("--label", default=None)
    p.add_argument("--tracking-uri", default=None)
    args = p.parse_args(argv)

    from fsr_core.data.codec import decode_png
    from fsr_core.data.ray_datasets import paired_table
    from fsr_core.degradation.resize import imresize
    from fsr_core.inversion.batch import load_checkpoint_network

    torch.set_num_threads(1)
    table, _ = paired_table(args.lr, args.hr, split=args.split)
    genuine = np.stack([decode_png(b) for b in table["lr_png"].to_pylist()])
    size = genuine.shape[1]
    hr = [decode_png(b) for b in table["hr_png"].to_pylist()]
    clean = np.stack([imresize(x, output_size=(size, size)) for x in hr])
    network = load_checkpoint_network(args.checkpoint, args.network, ema=args.ema)
    source = clean if args.input == "clean_lr" else np.stack(hr)
    torch.manual_seed(args.seed)
    with torch.no_grad():
        x = torch.from_numpy(source).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        out = network(x)
        out = out[0] if isinstance(out, (tuple, list)) else out
    learned = out.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).numpy()
    if learned.shape != genuine.shape:
        raise ValueError(f"the network made {learned.shape[1:]} crops, the genuine LR is {genuine.shape[1:]}")
    rows = {"learned": fidelity(learned, genuine), "bicubic": fidelity(clean, genuine),
            "genuine": {"highfreq": _highfreq(genuine)}}
    print(f"{'':10s} {'PSNR-Y':>8s} {'low-pass PSNR-Y':>16s} {'high-freq':>10s} {'ratio':>6s}   ({len(genuine)} faces)")
    for name in ("bicubic", "learned"):
        r = rows[name]
        print(f"{name:10s} {r['psnr_y']:8.2f} {r['psnr_y_lowpass']:16.2f} {r['highfreq']:10.2f} "
              f"{r['highfreq_ratio']:6.2f}")
    print(f"{'genuine':10s} {'':8s} {'':16s} {rows['genuine']['highfreq']:10.2f}")
    if args.tracking_uri:
        import mlflow

        mlflow.set_tracking_uri(args.tracking_uri)
        mlflow.set_experiment("fsr-degradation-fidelity")
        with mlflow.start_run(run_name=args.label):
            mlflow.log_params({"checkpoint": args.checkpoint, "network": args.network, "input": args.input,
                               "ema": args.ema, "split": args.split, "faces": len(genuine)})
            mlflow.log_metrics({f"{name}_{k}": v for name, r in rows.items() for k, v in r.items()})
            mlflow.log_text(json.dumps(rows, indent=1), "fidelity.json")
    return rows


if __name__ == "__main__":
    main()
