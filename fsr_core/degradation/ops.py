"""Image degradations as one ordered list of operations (a *chain*), sampled per crop.

A chain is configured as a list of op dicts, each named by its ``op`` field, e.g.::

    - {op: gaussian_blur, sigma: [0.5, 2.0]}
    - {op: downsample, scale: 8, method: [area, matlab_bicubic]}
    - {op: gaussian_noise, sigma: [1, 8], grey: 0.3}
    - {op: jpeg, quality: [40, 70]}

Ops (sizes in pixels of the image the op sees, intensities in 0-255 units):

* ``gaussian_blur``: ``sigma``; 0 is the identity.
* ``anisotropic_blur``: ``sigma_x`` (along ``angle``), ``sigma_y`` (across it), ``angle`` (degrees,
  counter-clockwise as displayed); Gaussian kernel sampled at pixel centres out to 3 sigma. Both
  sigmas 0 is the identity; one sigma 0 gives a line kernel.
* ``motion_blur``: ``length`` (integer kernel size; <= 1 is the identity), ``angle`` (degrees,
  counter-clockwise as displayed, 0 horizontal): a line of ``length`` pixels, rotated bilinearly.
* ``defocus_blur``: ``radius``; a disk kernel weighted by pixel coverage; 0 is the identity.
* ``downsample``: ``scale`` (integer factor, output side ``ceil(side / scale)``) or ``size``
  (output ``size x size``), and ``method``: ``matlab_bicubic`` (:func:`~.resize.imresize`,
  antialiased), ``area``, ``bilinear``, ``nearest`` (OpenCV ``INTER_*``). Never enlarges.
* ``shift``: ``dx``, ``dy``: sub-pixel translation (content moves right/down for positive values),
  bilinear ``cv2.warpAffine`` (OpenCV quantises the fractional part to 1/32 pixel).
* ``gaussian_noise``: ``sigma``; ``grey`` (bool, or the probability of grey noise): the same noise
  on all three channels when grey.
* ``poisson_noise``: ``peak``, photons at full scale (higher is less noise):
  ``x -> Poisson(x / 255 * peak) / peak * 255``, so the variance is ``255 * x / peak``.
* ``signal_noise``: heteroscedastic sensor noise, Gaussian with variance ``shot * x + read**2``.
* ``colour_cast``: ``red``, ``green``, ``blue`` multiplicative gains.
* ``gamma``: ``gamma``: ``x -> 255 * (x / 255) ** gamma``.
* ``contrast``: ``factor``: ``x -> m + factor * (x - m)``, ``m`` the mean over pixels and channels.
* ``jpeg``: ``quality`` 1-100 (OpenCV, 4:2:0 chroma).
* ``webp``: ``quality`` 1-100 (OpenCV, lossy).
* ``h264``: ``crf`` 0-51: one intra frame through PyAV's libx264 (yuv420p, preset medium, one
  thread), padded to even size by edge replication and cropped back.

Conventions:

* Parameters. Every numeric parameter is a fixed value or a range ``[lo, hi]`` (``lo <= hi``)
  drawn uniformly per crop; integer parameters (``quality``, ``crf``, ``length``) draw an integer in
  ``[lo, hi]`` inclusive. Categorical ``method`` is one value or a list to choose from uniformly.
  ``downsample``'s ``scale`` / ``size`` are fixed integers so that :meth:`DegradationChain.output_size`
  is known before any crop is drawn. Unknown ops, unknown keys, wrong types and out-of-bounds
  values are pydantic ``ValidationError``\\ s whose message names the key.
* Pixels. :meth:`DegradationChain.apply` takes ``uint8 [H, W, 3]`` RGB. Between ops the image is
  ``float32`` in ``[0, 255]``, unrounded, clipped after every op. Codec ops round to ``uint8`` for
  the codec and hand back float. The result is rounded (half to even) and clipped to ``uint8``.
  Filters and shifts use OpenCV's ``BORDER_REFLECT_101``.
* Determinism. :func:`crop_rng` seeds a generator from ``(seed, sha256(key))``, never Python's
  ``hash()``; :meth:`DegradationChain.sample` draws the concrete parameters from it (fixed values
  draw nothing) and :meth:`DegradationChain.apply` draws the noise from the same generator, so
  :func:`degrade_crop` is a pure function of ``(image, chain, seed, key)``. The sampled parameters
  are plain JSON values (one dict per op, with its ``op``), to be stored beside the crop.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, GetJsonSchemaHandler, model_validator
from pydantic_core import core_schema

from fsr_core.degradation.resize import imresize
from fsr_core.degradation.video_codec import h264_encoder, h264_round_trip

__all__ = [
    "H264",
    "AnisotropicBlur",
    "ColourCast",
    "Contrast",
    "DefocusBlur",
    "DegradationChain",
    "Downsample",
    "Gamma",
    "GaussianBlur",
    "GaussianNoise",
    "Jpeg",
    "MotionBlur",
    "Op",
    "PoissonNoise",
    "Shift",
    "SignalNoise",
    "Webp",
    "anisotropic_kernel",
    "crop_rng",
    "degrade_crop",
    "disk_kernel",
    "h264_encoder",
    "h264_round_trip",
    "load_chain",
    "motion_kernel",
]

_BORDER = cv2.BORDER_REFLECT_101


# -- parameter kinds: how a config value is validated, sampled and printed ------------------------


class _Param:
    """Annotated metadata of a sampled parameter: pydantic validates with :meth:`validate`,
    :meth:`_Op.sample` draws with :meth:`sample`, :meth:`_Op.describe` prints with :meth:`describe`.
    Validation raises ``ValueError`` (also for wrong types): pydantic turns only that into a
    ``ValidationError`` located at the key."""

    def validate(self, value: Any, name: str) -> Any:
        raise NotImplementedError

    def sample(self, value: Any, rng: np.random.Generator) -> Any:
        raise NotImplementedError

    def describe(self, value: Any) -> str:
        raise NotImplementedError

    def json_schema(self) -> dict[str, Any]:
        raise NotImplementedError

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.with_info_plain_validator_function(lambda value, info: self.validate(value, info.field_name))

    def __get_pydantic_json_schema__(self, schema: Any, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        return self.json_schema()


@dataclass(frozen=True)
class _Range(_Param):
    """A number, or ``[lo, hi]`` drawn uniformly per crop (integers inclusive when ``integer``)."""

    integer: bool = False
    ge: float | None = None
    gt: float | None = None
    le: float | None = None

    def _number(self, value: Any, name: str) -> int | float:
        kind = "an integer" if self.integer else "a number"
        wanted = numbers.Integral if self.integer else numbers.Real
        if isinstance(value, bool) or not isinstance(value, wanted):
            raise ValueError(f"{name} must be {kind} or a range [lo, hi], got {value!r} ({type(value).__name__})")
        number = int(value) if self.integer else float(value)
        if not math.isfinite(number):
            raise ValueError(f"{name} must be finite, got {value!r}")
        if self.ge is not None and number < self.ge:
            raise ValueError(f"{name} must be >= {self.ge:g}, got {value!r}")
        if self.gt is not None and number <= self.gt:
            raise ValueError(f"{name} must be > {self.gt:g}, got {value!r}")
        if self.le is not None and number > self.le:
            raise ValueError(f"{name} must be <= {self.le:g}, got {value!r}")
        return number

    def validate(self, value: Any, name: str) -> int | float | tuple[int | float, int | float]:
        if isinstance(value, (list, tuple)):
            if len(value) != 2:
                raise ValueError(f"{name} range must be [lo, hi], got {len(value)} values: {list(value)!r}")
            lo, hi = self._number(value[0], name), self._number(value[1], name)
            if lo > hi:
                raise ValueError(f"{name} range [lo, hi] needs lo <= hi, got {list(value)!r}")
            return (lo, hi)
        return self._number(value, name)

    def sample(self, value: Any, rng: np.random.Generator) -> int | float:
        if not isinstance(value, tuple):
            return value
        lo, hi = value
        if self.integer:
            return int(rng.integers(lo, hi, endpoint=True))
        return float(rng.uniform(lo, hi))

    def describe(self, value: Any) -> str:
        if isinstance(value, tuple):
            return f"[{value[0]:g},{value[1]:g}]"
        return f"{value:g}"

    def json_schema(self) -> dict[str, Any]:
        number: dict[str, Any] = {"type": "integer" if self.integer else "number"}
        if self.ge is not None:
            number["minimum"] = self.ge
        if self.gt is not None:
            number["exclusiveMinimum"] = self.gt
        if self.le is not None:
            number["maximum"] = self.le
        return {"anyOf": [number, {"type": "array", "items": number, "minItems": 2, "maxItems": 2}]}


@dataclass(frozen=True)
class _Choice(_Param):
    """One of ``choices``, or a non-empty list of them chosen from uniformly per crop."""

    choices: tuple[str, ...]

    def validate(self, value: Any, name: str) -> str | tuple[str, ...]:
        options = value if isinstance(value, (list, tuple)) else [value]
        if not options or any(not isinstance(option, str) or option not in self.choices for option in options):
            raise ValueError(
                f"{name} must be one of {', '.join(self.choices)} or a non-empty list of them, got {value!r}"
            )
        return tuple(options) if isinstance(value, (list, tuple)) else value

    def sample(self, value: Any, rng: np.random.Generator) -> str:
        if isinstance(value, tuple):
            return value[int(rng.integers(len(value)))]
        return value

    def describe(self, value: Any) -> str:
        return f"[{','.join(value)}]" if isinstance(value, tuple) else value

    def json_schema(self) -> dict[str, Any]:
        choice = {"enum": list(self.choices)}
        return {"anyOf": [choice, {"type": "array", "items": choice, "minItems": 1}]}


@dataclass(frozen=True)
class _Chance(_Param):
    """A bool, or the probability in ``[0, 1]`` that it is true for a crop."""

    def validate(self, value: Any, name: str) -> bool | float:
        if isinstance(value, bool):
            return value
        if isinstance(value, numbers.Real) and 0.0 <= float(value) <= 1.0:
            return float(value)
        raise ValueError(f"{name} must be a bool or a probability in [0, 1], got {value!r}")

    def sample(self, value: Any, rng: np.random.Generator) -> bool:
        if isinstance(value, bool):
            return value
        return bool(rng.random() < value)

    def describe(self, value: Any) -> str:
        return str(value).lower() if isinstance(value, bool) else f"{value:g}"

    def json_schema(self) -> dict[str, Any]:
        return {"anyOf": [{"type": "boolean"}, {"type": "number", "minimum": 0, "maximum": 1}]}


Real = Annotated[float | tuple[float, float], _Range()]
NonNegative = Annotated[float | tuple[float, float], _Range(ge=0.0)]
Positive = Annotated[float | tuple[float, float], _Range(gt=0.0)]
KernelSize = Annotated[int | tuple[int, int], _Range(integer=True, ge=0)]
Quality = Annotated[int | tuple[int, int], _Range(integer=True, ge=1, le=100)]
Crf = Annotated[int | tuple[int, int], _Range(integer=True, ge=0, le=51)]
Chance = Annotated[bool | float, _Chance()]
DownsampleMethod = Literal["matlab_bicubic", "area", "bilinear", "nearest"]
_METHODS: tuple[str, ...] = ("matlab_bicubic", "area", "bilinear", "nearest")
Methods = Annotated[DownsampleMethod | tuple[DownsampleMethod, ...], _Choice(_METHODS)]


def _param_of(field: Any) -> _Param | None:
    return next((meta for meta in field.metadata if isinstance(meta, _Param)), None)


# -- the ops ----------------------------------------------------------------------------------------


class _Op(BaseModel):
    """One operation: its configured (possibly ranged) parameters, and how to apply concrete ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    op: str

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        """Concrete parameters for one crop, in field order: ``{"op": name, field: value, ...}``."""
        params: dict[str, Any] = {"op": self.op}
        for name, field in type(self).model_fields.items():
            if name == "op":
                continue
            param, value = _param_of(field), getattr(self, name)
            if param is not None:
                params[name] = param.sample(value, rng)
            elif value is not None:
                params[name] = value
        return params

    def apply(self, image: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        """``float32 [H, W, 3]`` in ``[0, 255]`` -> ``float32 [h, w, 3]`` (unclipped) with ``params``
        from :meth:`sample`; noise is drawn from ``rng``."""
        raise NotImplementedError

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height, width

    def describe(self) -> str:
        parts = []
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if name == "op" or value is None:
                continue
            param = _param_of(field)
            parts.append(f"{name}={param.describe(value) if param is not None else value}")
        return f"{self.op}({', '.join(parts)})"


def _filter(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return cv2.filter2D(image, -1, kernel.astype(np.float32), borderType=_BORDER)


class GaussianBlur(_Op):
    """Isotropic Gaussian blur, ``sigma`` in pixels (``cv2.GaussianBlur``, kernel out to 4 sigma)."""

    op: Literal["gaussian_blur"]
    sigma: NonNegative

    def apply(self, image: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        sigma = params["sigma"]
        if sigma == 0:
            return image
        return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=_BORDER)


def anisotropic_kernel(sigma_x: float, sigma_y: float, angle: float) -> np.ndarray:
    """Gaussian kernel with ``sigma_x`` along direction ``angle`` (degrees, counter-clockwise as
    displayed) and ``sigma_y`` across it, sampled at pixel centres within 3 sigma, summing to 1.
    A zero sigma collapses that axis to a line (only pixels on it keep weight)."""
    radius = max(1, math.ceil(3.0 * max(sigma_x, sigma_y)))
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1].astype(np.float64)
    theta = math.radians(angle)
    along = x * math.cos(theta) - y * math.sin(theta)  # image y points down
    across = x * math.sin(theta) + y * math.cos(theta)
    floor = 1e-6  # a zero sigma becomes a tiny one: exp(-huge) is 0 off the line, 1 on it
    kernel = np.exp(-0.5 * ((along / max(sigma_x, floor)) ** 2 + (across / max(sigma_y, floor)) ** 2))
    return kernel / kernel.sum()


class AnisotropicBlur(_Op):
    """Rotated anisotropic Gaussian blur (see :func:`anisotropic_kernel`)."""

    op: Literal["anisotropic_blur"]
    sigma_x: NonNegative
    sigma_y: NonNegative
    angle: Real = 0.0

    def apply(self, image: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        if params["sigma_x"] == 0 and params["sigma_y"] == 0:
            return image
        return _filter(image, anisotropic_kernel(params["sigma_x"], params["sigma_y"], params["angle"]))


def motion_kernel(length: int, angle: float) -> np.ndarray:
    """Line kernel of ``length`` pixels through the centre at ``angle`` degrees (counter-clockwise
    as displayed, 0 horizontal), summing to 1; ``[length | 1, length | 1]``. An even length gets
    half weights at both ends so the line stays centred; the rotation is bilinear."""
    size = length | 1
    centre = size // 2
    kernel = np.zeros((size, size), np.float32)
    kernel[centre, :] = 1.0
    if length % 2 == 0:
        kernel[centre, 0] = kernel[centre, -1] = 0.5
    if angle % 360 != 0:
        rotation = cv2.getRotationMatrix2D((float(centre), float(centre)), float(angle), 1.0)
        kernel = cv2.warpAffine(kernel, rotation, (size, size), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    return kernel / kernel.sum()


class MotionBlur(_Op):
    """Linear motion blur (see :func:`motion_kernel`); ``length <= 1`` is the identity."""

    op: Literal["motion_blur"]
    length: KernelSize
    angle: Real = 0.0

    def apply(self, image: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        if params["length"] <= 1:
            return image
        return _filter(image, motion_kernel(params["length"], params["angle"]))


def disk_kernel(radius: float, *, supersample: int = 8) -> np.ndarray:
    """Disk of ``radius`` pixels, each kernel pixel weighted by the fraction of it inside the disk
    (``supersample`` x ``supersample`` points per pixel), summing to 1."""
    half = max(0, math.ceil(radius + 0.5) - 1)  # pixel i reaches the disk iff |i| - 0.5 < radius
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    grid = np.arange(-half, half + 1)
    points = (grid[:, None] + offsets[None, :]).ravel()  # sub-pixel coordinates along one axis
    inside = (points[:, None] ** 2 + points[None, :] ** 2) <= radius**2
    side = 2 * half + 1
    coverage = inside.reshape(side, supersample, side, supersample).mean(axis=(1, 3))
    coverage[half, half] = max(coverage[half, half], 1e-12)  # a disk smaller than a sample point
    return coverage / coverage.sum()


class DefocusBlur(_Op):
    """Out-of-focus blur with a disk kernel (see :func:`disk_kernel`); ``radius`` 0 is the identity."""

    op: Literal["defocus_blur"]
    radius: NonNegative

    def apply(self, image: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        if params["radius"] == 0:
            return image
        return _filter(image, disk_kernel(params["radius"]))


_CV2_INTERPOLATION = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}


class Downsample(_Op):
    """Reduce the size by an integer ``scale`` (side ``ceil(side / scale)``) or to ``size x size``."""

    op: Literal["downsample"]
    scale: int | None = Field(None, ge=1, strict=True)
    size: int | None = Field(None, ge=1, strict=True)
    method: Methods

    @model_validator(mode="after")
    def _one_of_scale_size(self) -> Downsample:
        if (self.scale is None) == (self.size is None):
            raise ValueError("downsample needs exactly one of scale or size")
        return self

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        if self.scale is not None:
            out = (-(-height // self.scale), -(-width // self.scale))
        else:
            out = (self.size, self.size)
        if out[0] > height or out[1] > width:
            raise ValueError(f"downsample to {out[0]}x{out[1]} would enlarge a {height}x{width} image")
        return out

    def apply(self, image: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        height, width = self.output_size(*image.shape[:2])
        if params["method"] == "matlab_bicubic":
            if self.scale is not None:  # MATLAB's imresize(image, 1/scale): same size as above
                return imresize(image, scale=1.0 / self.scale)
            return imresize(image, output_size=(height, width))
        return cv2.resize(image, (width, height), interpolation=_CV2_INTERPOLATION[params["method"]])

    def describe(self) -> str:
        amount = f"x{self.scale}" if self.scale is not None else f"{self.size}px"
        return f"downsample({_param_of(type(self).model_fields['method']).describe(self.method)}, {amount})"


class Shift(_Op):
    """Sub-pixel translation by ``(dx, dy)`` pixels, bilinear, reflected border."""

    op: Literal["shift"]
    dx: Real = 0.0
    dy: Real = 0.0

    def apply(self, image: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        if params["dx"] == 0 and params["dy"] == 0:
            return image
        matrix = np.array([[1.0, 0.0, params["dx"]], [0.0, 1.0, params["dy"]]], np.float64)
        height, width = image.shape[:2]
        return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=_BORDER)


class GaussianNoise(_Op):
    """Additive white Gaussian noise of std ``sigma``; the same on all channels when ``grey``."""

    op: Literal["gaussian_noise"]
    sigma: NonNegative
    grey: Chance = False

    def apply(self, image: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        if params["sigma"] == 0:
            return image
        shape = image.shape[:2] + ((1,) if params["grey"] else image.shape[2:])
        return image + np.float32(params["sigma"]) * rng.standard_normal(shape, dtype=np.float32)


class PoissonNoise(_Op):
    """Photon noise: ``x -> Poisson(x / 255 * peak) / peak * 255`` per channel."""

    op: Literal["poisson_noise"]
    peak: Positive

    def apply(self, image: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        peak = params["peak"]
        counts = rng.poisson(image.astype(np.float64) * (peak / 255.0))
        return (counts * (255.0 / peak)).astype(np.float32)


class SignalNoise(_Op):
    """Heteroscedastic sensor noise: Gaussian with variance ``shot * x + read**2`` per pixel."""

    op: Literal["signal_noise"]
    shot: NonNegative
    read: NonNegative

    def apply(self, image: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        std = np.sqrt(np.float32(params["shot"]) * image + np.float32(params["read"]) ** 2)
        return image + std * rng.standard_normal(image.shape, dtype=np.float32)


class ColourCast(_Op):
    """Per-channel gains (RGB)."""

    op: Literal["colour_cast"]
    red: NonNegative = 1.0
    green: NonNegative = 1.0
    blue: NonNegative = 1.0

    def apply(self, image: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        return image * np.array([params["red"], params["green"], params["blue"]], np.float32)


class Gamma(_Op):
    """Tone curve ``x -> 255 * (x / 255) ** gamma``."""

    op: Literal["gamma"]
    gamma: Positive

    def apply(self, image: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        return (255.0 * (image.astype(np.float64) / 255.0) ** params["gamma"]).astype(np.float32)


class Contrast(_Op):
    """Contrast about the image mean (over pixels and channels): ``x -> m + factor * (x - m)``."""

    op: Literal["contrast"]
    factor: NonNegative

    def apply(self, image: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        mean = np.float32(image.mean(dtype=np.float64))
        return mean + np.float32(params["factor"]) * (image - mean)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _image_codec(image: np.ndarray, extension: str, flags: list[int]) -> np.ndarray:
    ok, buffer = cv2.imencode(extension, cv2.cvtColor(_to_uint8(image), cv2.COLOR_RGB2BGR), flags)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {image.shape[1]}x{image.shape[0]} image as {extension}")
    decoded = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB).astype(np.float32)


class Jpeg(_Op):
    """JPEG round trip at ``quality`` (OpenCV / libjpeg)."""

    op: Literal["jpeg"]
    quality: Quality

    def apply(self, image: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        return _image_codec(image, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, int(params["quality"])])


class Webp(_Op):
    """Lossy WebP round trip at ``quality`` (OpenCV / libwebp)."""

    op: Literal["webp"]
    quality: Quality

    def apply(self, image: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        return _image_codec(image, ".webp", [cv2.IMWRITE_WEBP_QUALITY, int(params["quality"])])


class H264(_Op):
    """H.264 round trip of the image as one intra frame at ``crf`` (see :func:`h264_round_trip`)."""

    op: Literal["h264"]
    crf: Crf

    def apply(self, image: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        return h264_round_trip(_to_uint8(image), int(params["crf"])).astype(np.float32)


Op = Annotated[
    GaussianBlur
    | AnisotropicBlur
    | MotionBlur
    | DefocusBlur
    | Downsample
    | Shift
    | GaussianNoise
    | PoissonNoise
    | SignalNoise
    | ColourCast
    | Gamma
    | Contrast
    | Jpeg
    | Webp
    | H264,
    Field(discriminator="op"),
]


# -- the chain --------------------------------------------------------------------------------------


class DegradationChain(BaseModel):
    """An ordered list of ops; see the module docstring for the conventions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ops: list[Op]

    def sample(self, rng: np.random.Generator) -> list[dict[str, Any]]:
        """Concrete parameters of every op for one crop (plain JSON values, with each ``op``)."""
        return [op.sample(rng) for op in self.ops]

    def apply(self, image: np.ndarray, params: list[dict[str, Any]], rng: np.random.Generator) -> np.ndarray:
        """Degrade ``uint8 [H, W, 3]`` RGB with ``params`` from :meth:`sample`; noise is drawn from
        ``rng``. Returns ``uint8 [h, w, 3]`` with ``(h, w) = output_size(H, W)``."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
            raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
        if len(params) != len(self.ops):
            raise ValueError(f"got {len(params)} parameter dicts for {len(self.ops)} ops")
        out = image.astype(np.float32)
        for index, (op, op_params) in enumerate(zip(self.ops, params)):
            if op_params.get("op") != op.op:
                raise ValueError(f"parameters {index} are for {op_params.get('op')!r}, op {index} is {op.op!r}")
            out = np.clip(op.apply(out, op_params, rng), 0.0, 255.0).astype(np.float32, copy=False)
            if out.ndim == 2:  # OpenCV drops a channel axis of size 1; keep [H, W, 3] throughout
                out = out[:, :, None]
        return _to_uint8(out)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """``(height, width)`` of :meth:`apply`'s output for an input of ``(height, width)``."""
        for op in self.ops:
            height, width = op.output_size(height, width)
        return height, width

    def describe(self) -> str:
        """One line: the ops in order with their configured values and ranges."""
        return " > ".join(op.describe() for op in self.ops) or "identity"


def crop_rng(seed: int, key: str) -> np.random.Generator:
    """Generator for one crop from the run ``seed`` and the crop's ``key`` (stable across processes:
    the key enters through its SHA-256, never Python's ``hash()``)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not isinstance(key, str):
        raise ValueError(f"key must be a str, got {type(key).__name__}")
    key_int = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest(), "big")
    return np.random.default_rng(np.random.SeedSequence([int(seed), key_int]))


def degrade_crop(
    image: np.ndarray, chain: DegradationChain, *, seed: int, key: str
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Sample ``chain``'s parameters and apply them with :func:`crop_rng` ``(seed, key)``.

    Returns:
        ``(lr, params)``: ``uint8 [h, w, 3]`` and the sampled parameters (JSON values).
    """
    rng = crop_rng(seed, key)
    params = chain.sample(rng)
    return chain.apply(image, params, rng), params


def load_chain(value: list | dict | DegradationChain) -> DegradationChain:
    """A chain from config: a list of op dicts or ``{"ops": [...]}``. Raises pydantic's
    ``ValidationError`` (naming the op and key) for unknown ops, unknown keys and bad values."""
    if isinstance(value, DegradationChain):
        return value
    if isinstance(value, (list, tuple)):
        return DegradationChain.model_validate({"ops": list(value)})
    return DegradationChain.model_validate(value)
