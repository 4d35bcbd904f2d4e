"""Face detection recall on composed scenes with known faces, per face height, for each detector setting.

    python bench/detection_recall.py [--scenes 6] [--seed 0] [--settings "hog u1,mtcnn m12"] [--json out.json]

The scenes (384x384 RGB) are composed here, so every face's box and landmarks are known:

- **Faces**: the first 100 faces of scikit-image's LFW subset (25x25 grey crops of real photos) and
  the astronaut (``skimage.data.astronaut()``, also mirrored). Each face's reference box and five
  landmarks come from dlib's HOG detector + 68-point predictor on a clean 8x enlargement (LFW) or on
  the full 512 px picture (astronaut); LFW faces it does not find there (8 of 100) are left out.
  **Face height** is that reference box's height (dlib's convention: brow to chin).
- **Scenes**: a background cut at random from scikit-image's natural pictures (coffee, cat, rocket,
  coins, bricks, grass, gravel, text, Hubble field, tissue, horse) with random lines and blocks on
  it; up to 12 faces of one height on a jittered grid (LFW tiles pasted as they are, the astronaut
  with its surroundings blended in); then one of six conditions (:data:`CONDITIONS`: clean, Gaussian
  blur sigma 0.8 or 1.2, JPEG quality 75 or 50, blur 0.8 then JPEG 75), cycled so every height
  gets each condition equally often. Recall is printed overall and, at 16 px, per condition.
- **Match**: a detection matches a face when its box centre lies within 0.4 face heights of the
  reference centre and its height is 0.5-2.5x the reference (detectors differ in box convention:
  MTCNN's boxes are ~1.2x dlib's); greedy by score, one detection per face. Unmatched detections
  are false positives (the backgrounds contain no faces; the cat's counts when found).
- **Landmark error**: for matched faces, the mean distance of the five standard landmarks from the
  reference, divided by the reference eye distance (NME), median over faces of 16 px and more.
- **Speed**: images per second and faces per second of one process on one thread
  (``torch.set_num_threads(1)``; dlib is single-threaded), summed over every scene.

Every setting sees the same scenes. Large frames: each detector scans the whole frame at every
scale of its own pyramid (dlib: the frame doubled ``upsample`` times, then scaled down; MTCNN: the
frame scaled so a ``min_face_size`` face is 12 px, then down by 0.709 per level); no tiling.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HEIGHTS = (8, 10, 12, 16, 24, 32, 48, 64, 96)
CANVAS = 384
MAX_FACES = 12
#: scene conditions, cycled so every height gets each equally: (Gaussian blur sigma, JPEG quality; 0: none)
CONDITIONS = {"clean": (0.0, 0), "blur 0.8": (0.8, 0), "blur 1.2": (1.2, 0), "jpeg 75": (0.0, 75),
              "jpeg 50": (0.0, 50), "blur 0.8 + jpeg 75": (0.8, 75)}
BACKGROUNDS = ("coffee", "chelsea", "rocket", "coins", "brick", "grass", "gravel", "text",
               "hubble_deep_field", "immunohistochemistry", "horse")

#: name -> (detector kind or preset, FaceDetector arguments); see fsr_core.data.detection. ``min_face_size``
#: 6 for dlib's detectors keeps their smallest finds (the filter would otherwise hide them); for MTCNN it
#: is where the pyramid starts. "mtcnn-tiny" is the preset archive restoration uses by default.
SETTINGS = {
    "hog u0": ("hog", dict(upsample=0, min_face_size=6)),
    "hog u1": ("hog", dict(upsample=1, min_face_size=6)),
    "hog u2": ("hog", dict(upsample=2, min_face_size=6)),
    "hog u3": ("hog", dict(upsample=3, min_face_size=6)),
    "cnn u1": ("cnn", dict(upsample=1, min_face_size=6)),
    "mtcnn m12": ("mtcnn", dict(min_face_size=12)),
    "mtcnn m8": ("mtcnn", dict(min_face_size=8)),
    "mtcnn m12 lin": ("mtcnn", dict(min_face_size=12, interpolation="linear")),
    "mtcnn x2 lin": ("mtcnn", dict(min_face_size=12, interpolation="linear", upscale=2.0)),
    "mtcnn-tiny": ("mtcnn-tiny", dict(min_face_size=12)),
    "mtcnn-tiny m8": ("mtcnn-tiny", dict(min_face_size=8)),
    "mtcnn-tiny o.7": ("mtcnn-tiny", dict(min_face_size=12, score_threshold=0.7)),
    "mtcnn-tiny o.8": ("mtcnn-tiny", dict(min_face_size=12, score_threshold=0.8)),
}


# ---------------------------------------------------------------------------- the faces
class Face:
    """A face picture with its reference box (x0, y0, x1, y1) and five standard landmarks."""

    def __init__(self, rgb: np.ndarray, box: np.ndarray, landmarks: np.ndarray, context: bool) -> None:
        self.rgb, self.box, self.landmarks, self.context = rgb, box, landmarks, context


def reference_faces() -> list[Face]:
    import skimage.data

    from fsr_core.data.detection import FaceDetector

    detector = FaceDetector("hog", upsample=0, min_face_size=4, landmark_model="dlib68")
    faces = []
    for tile in skimage.data.lfw_subset()[:100]:
        grey = np.round(tile * 255).astype(np.uint8)
        big = cv2.resize(grey, (200, 200), interpolation=cv2.INTER_CUBIC)
        padded = np.stack([np.pad(big, 100, mode="edge")] * 3, axis=-1)
        found = detector.detect(padded)
        if not found:
            continue
        box = (found[0].box - 100) / 8.0
        landmarks = (found[0].landmarks - 100 + 0.5) / 8.0 - 0.5  # pixel centres of the 8x picture -> tile
        faces.append(Face(np.stack([grey] * 3, axis=-1), box, landmarks, context=False))
    astronaut = skimage.data.astronaut()
    found = detector.detect(astronaut)[0]
    faces.append(Face(astronaut, found.box, found.landmarks, context=True))
    mirrored = np.ascontiguousarray(astronaut[:, ::-1])
    width = astronaut.shape[1]
    box = np.array([width - found.box[2], found.box[1], width - found.box[0], found.box[3]])
    points = found.landmarks.copy()
    points[:, 0] = width - 1 - points[:, 0]
    points = points[[1, 0, 2, 4, 3]]  # left and right swap in a mirror
    faces.append(Face(mirrored, box, points, context=True))
    return faces


# ---------------------------------------------------------------------------- the scenes
def background(rng: np.random.Generator) -> np.ndarray:
    import skimage.data

    picture = getattr(skimage.data, BACKGROUNDS[rng.integers(len(BACKGROUNDS))])()
    if picture.ndim == 2:
        picture = np.stack([picture] * 3, axis=-1)
    picture = picture[..., :3]
    if picture.dtype != np.uint8:  # the horse is a boolean mask
        picture = np.where(picture, 230, 40).astype(np.uint8) if picture.dtype == bool else \
            np.clip(picture * 255, 0, 255).astype(np.uint8)
    h, w = picture.shape[:2]
    side = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    out = cv2.resize(np.ascontiguousarray(picture[y:y + side, x:x + side]), (CANVAS, CANVAS),
                     interpolation=cv2.INTER_AREA)
    for _ in range(int(rng.integers(4, 12))):  # clutter: lines and blocks
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        p, q = rng.integers(0, CANVAS, 2), rng.integers(0, CANVAS, 2)
        if rng.random() < 0.5:
            cv2.line(out, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), colour, int(rng.integers(1, 4)))
        else:
            cv2.rectangle(out, (int(p[0]), int(p[1])), (int(p[0]) + int(rng.integers(4, 30)),
                                                         int(p[1]) + int(rng.integers(4, 30))), colour, -1)
    return out


def paste(canvas: np.ndarray, face: Face, height: int, centre: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Paste ``face`` so its reference box is ``height`` px tall, centred at ``centre``; box and landmarks in the canvas."""
    scale = height / (face.box[3] - face.box[1])
    box_centre = np.array([(face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2])
    if face.context:  # the astronaut: the box and 60% of its height around it, blended into the scene
        half = 1.1 * (face.box[3] - face.box[1])
        x0, y0 = np.floor(box_centre - half).astype(int)
        x1, y1 = np.ceil(box_centre + half).astype(int)
        region = face.rgb[max(y0, 0):y1, max(x0, 0):x1]
        origin = np.array([max(x0, 0), max(y0, 0)], dtype=np.float64)
    else:
        region, origin = face.rgb, np.zeros(2)
    # source -> canvas: x' = scale * (x - box_centre) + centre, pixel-edge coordinates
    shift = np.asarray(centre) - scale * box_centre
    size = (max(1, int(round(region.shape[1] * scale))), max(1, int(round(region.shape[0] * scale))))
    small = cv2.resize(region, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    top_left = np.round(scale * origin + shift).astype(int)
    x, y = int(top_left[0]), int(top_left[1])
    h, w = small.shape[:2]
    cx0, cy0, cx1, cy1 = max(x, 0), max(y, 0), min(x + w, CANVAS), min(y + h, CANVAS)
    patch = small[cy0 - y:cy1 - y, cx0 - x:cx1 - x].astype(np.float32)
    if face.context:
        ramp = np.minimum(np.minimum(np.arange(w), np.arange(w)[::-1]) / max(1.0, 0.2 * w), 1.0)
        vramp = np.minimum(np.minimum(np.arange(h), np.arange(h)[::-1]) / max(1.0, 0.2 * h), 1.0)
        alpha = (vramp[:, None] * ramp[None, :])[cy0 - y:cy1 - y, cx0 - x:cx1 - x, None]
    else:
        alpha = 1.0
    target = canvas[cy0:cy1, cx0:cx1].astype(np.float32)
    canvas[cy0:cy1, cx0:cx1] = np.clip(alpha * patch + (1 - alpha) * target + 0.5, 0, 255).astype(np.uint8)
    box = scale * face.box + np.tile(shift, 2)
    landmarks = scale * (face.landmarks + 0.5) + shift - 0.5  # pixel centres
    return box, landmarks


def make_scene(faces: list[Face], height: int, condition: str, rng: np.random.Generator) -> tuple[np.ndarray, list, dict]:
    canvas = background(rng)
    cell = max(int(round(2.0 * height)), 24)
    per_row = CANVAS // cell
    cells = [(r, c) for r in range(per_row) for c in range(per_row)]
    chosen = rng.permutation(len(cells))[:MAX_FACES]
    truth = []
    for index in chosen:
        r, c = cells[index]
        jitter = rng.uniform(-0.2, 0.2, 2) * (cell - height)
        centre = ((c + 0.5) * cell + jitter[0], (r + 0.5) * cell + jitter[1])
        face = faces[int(rng.integers(len(faces)))]
        truth.append(paste(canvas, face, height, centre))
    sigma, quality = CONDITIONS[condition]
    if sigma:
        canvas = cv2.GaussianBlur(canvas, (0, 0), sigma)
    if quality:
        ok, data = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, quality])
        canvas = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    return np.ascontiguousarray(canvas), truth, condition


# ---------------------------------------------------------------------------- scoring
def match(detections, truth) -> tuple[int, int, list[float]]:
    """(faces found, false positives, NME of each found face) for one scene."""
    taken = [False] * len(truth)
    found, false_positives, errors = 0, 0, []
    for det in sorted(detections, key=lambda d: -d.score):
        centre = np.array([(det.box[0] + det.box[2]) / 2, (det.box[1] + det.box[3]) / 2])
        det_h = det.box[3] - det.box[1]
        best, best_distance = None, None
        for i, (box, _) in enumerate(truth):
            if taken[i]:
                continue
            h = box[3] - box[1]
            distance = np.linalg.norm(centre - np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]))
            if distance <= 0.4 * h and 0.5 <= det_h / h <= 2.5 and (best is None or distance < best_distance):
                best, best_distance = i, distance
        if best is None:
            false_positives += 1
            continue
        taken[best] = True
        found += 1
        landmarks = truth[best][1]
        eye_distance = np.linalg.norm(landmarks[0] - landmarks[1])
        errors.append(float(np.mean(np.linalg.norm(det.landmarks - landmarks, axis=1)) / eye_distance))
    return found, false_positives, errors


def run(setting: tuple[str, dict], scenes: dict) -> dict:
    from fsr_core.data.detection import make_detector

    detector = make_detector(setting[0], **setting[1])
    recall, fp, nme, by_condition = {}, {}, [], {}
    seconds, images, faces = 0.0, 0, 0
    for height, items in scenes.items():
        found = total = false_positives = 0
        for canvas, truth, condition in items:
            start = time.perf_counter()
            detections = detector.detect(canvas)
            seconds += time.perf_counter() - start
            f, p, errors = match(detections, truth)
            found, total, false_positives = found + f, total + len(truth), false_positives + p
            if height == 16:
                counts = by_condition.setdefault(condition, [0, 0])
                counts[0], counts[1] = counts[0] + f, counts[1] + len(truth)
            if height >= 16:
                nme.extend(errors)
        recall[height] = found / total
        fp[height] = false_positives / len(items)
        images, faces = images + len(items), faces + total
    return {"recall": recall, "fp_per_image": fp, "recall_16_by_condition": {k: f / n for k, (f, n) in by_condition.items()}, "nme_median": float(np.median(nme)) if nme else float("nan"),
            "images_per_s": images / seconds, "faces_per_s": faces / seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=12, help="scenes per face height (default 12: 2 per condition)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names of SETTINGS")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting(s) {unknown}; expected some of {list(SETTINGS)}")
    faces = reference_faces()
    rng = np.random.default_rng(args.seed)
    conditions = list(CONDITIONS)
    scenes = {h: [make_scene(faces, h, conditions[i % len(conditions)], rng) for i in range(args.scenes)]
              for h in HEIGHTS}
    counts = {h: sum(len(t) for _, t, _ in items) for h, items in scenes.items()}
    print(f"{len(faces)} reference faces; {args.scenes} scenes of {CANVAS}x{CANVAS} per height; "
          f"faces per height: {counts}")
    results = {}
    header = f"{'setting':<17}" + "".join(f"{h:>6}" for h in HEIGHTS) + "   FP/img  NME>=16  img/s  faces/s"
    print("recall by face height (px)\n" + header)
    for name in names:
        r = run(SETTINGS[name], scenes)
        results[name] = r
        fp = sum(r["fp_per_image"].values()) / len(HEIGHTS)
        print(f"{name:<17}" + "".join(f"{r['recall'][h]:>6.2f}" for h in HEIGHTS)
              + f"   {fp:>6.2f}  {r['nme_median']:>7.3f}  {r['images_per_s']:>5.2f}  {r['faces_per_s']:>7.1f}",
              flush=True)
    print("\nrecall at 16 px by condition\n" + f"{'setting':<17}" + "".join(f"{c:>20}" for c in conditions))
    for name, r in results.items():
        print(f"{name:<17}" + "".join(f"{r['recall_16_by_condition'].get(c, float('nan')):>20.2f}" for c in conditions))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"settings": {n: [SETTINGS[n][0], SETTINGS[n][1]] for n in names}, "faces_per_height": counts,
                       "results": results}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
