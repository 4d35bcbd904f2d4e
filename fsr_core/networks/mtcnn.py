"""MTCNN face detection (Zhang et al. 2016): the P-, R- and O-nets and their three-stage cascade.

This is a torch + numpy re-implementation of the cascade that ``facenet-pytorch`` ships, written
here because ``facenet-pytorch``'s own detection code imports ``torchvision`` (for NMS and image
conversion), which cannot be installed beside the CPU build of torch this project pins. Only its
weights are used: ``pnet.pt``, ``rnet.pt``, ``onet.pt`` (plain state dicts, loaded with
``weights_only=True`` by :mod:`fsr_core.data.detection`), whose parameter names the modules below
match exactly.

Networks (inputs are RGB, normalised as ``(pixel - 127.5) / 128``, i.e. ``[N,3,H,W]`` in ~[-1,1]):

- :class:`PNet`: fully convolutional proposal net; ``[N,3,H,W]`` (H, W >= 12) ->
  box offsets ``[N,4,H',W']`` and face probability ``[N,2,H',W']`` (softmax over
  background/face), one cell per 12x12 window at stride 2.
- :class:`RNet`: refines 24x24 crops; ``[N,3,24,24]`` -> offsets ``[N,4]``, probability ``[N,2]``.
- :class:`ONet`: 48x48 crops; ``[N,3,48,48]`` -> offsets ``[N,4]``, landmarks ``[N,10]``
  (``x1..x5, y1..y5`` as fractions of the box), probability ``[N,2]``.

The cascade (:func:`detect_faces`) follows the reference: an image pyramid with factor 0.709
starting where a ``min_face_size`` face becomes 12 px; PNet proposals over threshold, NMS per
scale (IoU 0.5) and over all scales (0.7), box regression, squaring; RNet on 24x24 crops (zero
padded where a box leaves the image), NMS 0.7, regression, squaring; ONet on 48x48 crops, NMS 0.7
with the "min" overlap. The five landmarks come out in the standard order: left eye, right eye,
nose tip, left mouth corner, right mouth corner, where left/right are as seen in the image (the
subject's right eye is the image's left eye).

Coordinates: the reference keeps MATLAB's 1-based box convention internally; the boxes returned
here are converted to 0-based ``[x0, y0, x1, y1]`` with ``x1``/``y1`` exclusive (pixel edges), and
landmarks are 0-based pixel-centre coordinates (OpenCV's convention).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch import nn

__all__ = ["MTCNN", "ONet", "PNet", "RNet", "detect_faces", "nms"]


def _check_input(x: torch.Tensor, *, name: str, size: int | None) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{name} expects [N,3,H,W] input, got shape {tuple(x.shape)}")
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        raise ValueError(f"{name} expects {size}x{size} crops, got shape {tuple(x.shape)}")
    if size is None and min(x.shape[-2:]) < 12:
        raise ValueError(f"{name} expects H, W >= 12, got shape {tuple(x.shape)}")


class PNet(nn.Module):
    """Proposal net: ``[N,3,H,W]`` in ~[-1,1] -> (offsets ``[N,4,H',W']``, probabilities ``[N,2,H',W']``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_input(x, name="PNet", size=None)
        x = self.prelu1(self.conv1(x))
        x = self.pool1(x)
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)


class RNet(nn.Module):
    """Refinement net: ``[N,3,24,24]`` in ~[-1,1] -> (offsets ``[N,4]``, probabilities ``[N,2]``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_input(x, name="RNet", size=24)
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        # The weights were converted from Caffe (W, H order): flatten in that order.
        x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)
        x = self.prelu4(self.dense4(x))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """Output net: ``[N,3,48,48]`` in ~[-1,1] -> (offsets ``[N,4]``, landmarks ``[N,10]``, probabilities ``[N,2]``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _check_input(x, name="ONet", size=48)
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)
        x = self.prelu5(self.dense5(x))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)


class MTCNN(nn.Module):
    """The three nets together (``pnet``, ``rnet``, ``onet``); state-dict keys ``pnet.conv1.weight`` ..."""

    def __init__(self) -> None:
        super().__init__()
        self.pnet = PNet()
        self.rnet = RNet()
        self.onet = ONet()
        self.eval()


# ---------------------------------------------------------------------------- box helpers
def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression; indices kept, best score first.

    ``boxes`` are ``[K,4]`` in the reference's inclusive convention (areas use ``+1``); ``mode``
    ``"union"`` divides the intersection by the union (IoU), ``"min"`` by the smaller area.
    """
    if mode not in ("union", "min"):
        raise ValueError(f"mode must be 'union' or 'min', got {mode!r}")
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores, kind="stable")[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        denom = np.minimum(area[i], area[rest]) if mode == "min" else area[i] + area[rest] - inter
        order = rest[inter / np.maximum(denom, 1e-12) <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square around its centre (the reference's ``rerec``)."""
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Apply box offsets (fractions of the inclusive width/height; the reference's ``bbreg``)."""
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    out[:, 0] += offsets[:, 0] * w
    out[:, 1] += offsets[:, 1] * h
    out[:, 2] += offsets[:, 2] * w
    out[:, 3] += offsets[:, 3] * h
    return out


#: How the pyramid levels and the R-/O-net crops are resampled (:func:`detect_faces`'s ``interpolation``).
INTERPOLATIONS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}


def _crops(rgb: np.ndarray, boxes: np.ndarray, size: int, interpolation: int = cv2.INTER_AREA) -> np.ndarray:
    """``[K,size,size,3]`` float32 crops of 1-based inclusive boxes, zero outside the image."""
    height, width = rgb.shape[:2]
    out = np.zeros((len(boxes), size, size, 3), np.float32)
    for k, box in enumerate(np.trunc(boxes[:, :4]).astype(np.int64)):
        x0, y0, x1, y1 = int(box[0]) - 1, int(box[1]) - 1, int(box[2]), int(box[3])
        if x1 <= x0 or y1 <= y0:
            continue
        patch = np.zeros((y1 - y0, x1 - x0, 3), np.uint8)
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if sx1 > sx0 and sy1 > sy0:
            patch[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
        out[k] = cv2.resize(patch, (size, size), interpolation=interpolation)
    return out


def _to_input(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """``[K,H,W,3]`` (or ``[H,W,3]``) pixels -> normalised ``[K,3,H,W]`` float32 tensor."""
    if images.ndim == 3:
        images = images[None]
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
    return ((x - 127.5) * 0.0078125).to(device)


def _batched(net: nn.Module, x: torch.Tensor, batch: int = 512) -> list[np.ndarray]:
    outs = [net(x[i : i + batch]) for i in range(0, len(x), batch)]
    return [torch.cat(parts).float().cpu().numpy() for parts in zip(*outs)]


# ---------------------------------------------------------------------------- cascade
@torch.inference_mode()
def detect_faces(
    nets: MTCNN,
    rgb: np.ndarray,
    *,
    min_face_size: float = 20.0,
    thresholds: Sequence[float] = (0.6, 0.7, 0.7),
    factor: float = 0.709,
    interpolation: str = "area",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the MTCNN cascade on one image.

    Args:
        nets: the three nets with their weights, on the device to run on.
        rgb: ``[H,W,3]`` uint8 RGB image.
        min_face_size: smallest face side (px) the pyramid searches for (>= 12 for the finest
            level to be the image itself; smaller values upsample the image).
        thresholds: face-probability thresholds of the P-, R- and O-net stages.
        factor: pyramid scale step (< 1).
        interpolation: how pyramid levels and crops are resampled: ``"area"`` (facenet-pytorch's
            choice, the default), ``"linear"`` (the original MATLAB code's ``imResample(...,
            'bilinear')``, no anti-aliasing) or ``"cubic"``.

    Returns:
        ``boxes [K,4]`` (0-based ``x0, y0, x1, y1``, exclusive end), ``scores [K]`` (O-net face
        probability) and ``landmarks [K,5,2]`` (left eye, right eye, nose, left and right mouth
        corners, image left/right), all float64, best score first.
    """
    if not (isinstance(rgb, np.ndarray) and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8):
        raise ValueError(f"expected an [H,W,3] uint8 RGB image, got {getattr(rgb, 'shape', type(rgb))}")
    if not 0 < factor < 1:
        raise ValueError(f"factor must be in (0, 1), got {factor}")
    if min_face_size <= 0:
        raise ValueError(f"min_face_size must be > 0, got {min_face_size}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {interpolation!r}")
    flag = INTERPOLATIONS[interpolation]
    if len(thresholds) != 3:
        raise ValueError(f"thresholds must hold 3 values, got {thresholds!r}")
    device = next(nets.parameters()).device
    empty = (np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))
    height, width = rgb.shape[:2]

    # Stage 1: PNet over the pyramid.
    m = 12.0 / min_face_size
    scales, side = [], min(height, width) * m
    scale = m
    while side >= 12:
        scales.append(scale)
        scale *= factor
        side *= factor
    proposals = []
    for scale in scales:
        h_s, w_s = int(math.ceil(height * scale)), int(math.ceil(width * scale))
        level = cv2.resize(rgb, (w_s, h_s), interpolation=flag)
        offsets, probs = (t[0].float().cpu().numpy() for t in nets.pnet(_to_input(level, device)))
        rows, cols = np.nonzero(probs[1] >= thresholds[0])
        if rows.size == 0:
            continue
        cells = np.stack([cols, rows], axis=1).astype(np.float64)
        q1 = np.floor((2 * cells + 1) / scale)
        q2 = np.floor((2 * cells + 12) / scale)
        found = np.concatenate(
            [q1, q2, probs[1, rows, cols][:, None], offsets[:, rows, cols].T], axis=1
        )  # x1 y1 x2 y2 score dx1 dy1 dx2 dy2
        proposals.append(found[nms(found[:, :4], found[:, 4], 0.5, "union")])
    if not proposals:
        return empty
    boxes = np.concatenate(proposals)
    boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7, "union")]
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    boxes = np.stack(
        [
            boxes[:, 0] + boxes[:, 5] * w,
            boxes[:, 1] + boxes[:, 6] * h,
            boxes[:, 2] + boxes[:, 7] * w,
            boxes[:, 3] + boxes[:, 8] * h,
            boxes[:, 4],
        ],
        axis=1,
    )
    boxes = _square(boxes)

    # Stage 2: RNet on 24x24 crops.
    offsets, probs = _batched(nets.rnet, _to_input(_crops(rgb, boxes, 24, flag), device))
    passed = probs[:, 1] > thresholds[1]
    boxes = np.concatenate([boxes[passed, :4], probs[passed, 1:2]], axis=1)
    offsets = offsets[passed]
    if len(boxes) == 0:
        return empty
    keep = nms(boxes[:, :4], boxes[:, 4], 0.7, "union")
    boxes = _square(_regress(boxes[keep], offsets[keep]))

    # Stage 3: ONet on 48x48 crops; landmarks relative to the crop boxes.
    offsets, points, probs = _batched(nets.onet, _to_input(_crops(rgb, boxes, 48, flag), device))
    passed = probs[:, 1] > thresholds[2]
    boxes = np.concatenate([boxes[passed, :4], probs[passed, 1:2]], axis=1)
    offsets, points = offsets[passed], points[passed]
    if len(boxes) == 0:
        return empty
    w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
    h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
    landmarks = np.stack(
        [w * points[:, :5] + boxes[:, 0:1] - 1, h * points[:, 5:] + boxes[:, 1:2] - 1], axis=2
    )
    boxes = _regress(boxes, offsets)
    keep = nms(boxes[:, :4], boxes[:, 4], 0.7, "min")
    boxes, landmarks = boxes[keep], landmarks[keep]
    # 1-based inclusive -> 0-based with exclusive end.
    out_boxes = np.stack([boxes[:, 0] - 1, boxes[:, 1] - 1, boxes[:, 2], boxes[:, 3]], axis=1)
    return out_boxes.astype(np.float64), boxes[:, 4].astype(np.float64), landmarks.astype(np.float64)
