"""Parametric synthetic faces: the faces of the embedded demo world (no downloads).

Model of a face
---------------
A picture is an :class:`Identity` (who: head shape, skin tone, eyes, brows, nose, mouth, hair, ears and a
skin-texture seed; fixed for a person) seen under :class:`Conditions` (how: pose, expression, eyeglasses,
lighting, background, clothing, framing jitter; one per photo).

Geometry lives in *face units*: 1 unit is about half the cheek-to-cheek width; the origin is on the midline
between the eyes and the mouth, +u points to the image right and +v down. Crops are aligned like
FFHQ/CelebA-aligned data: one unit is :data:`FACE_UNIT` of the image width (the face fills ~60-68% of it), the
face is centred and the eyes sit on :data:`EYE_LINE`, at 40% of the height.

Every pixel centre is mapped back from the image: undoing framing jitter and roll (in-plane rotation) gives head
coordinates ``(u, v)``; undoing yaw with a cylinder of radius ``R`` gives frontal coordinates ``(uf, v)``: a
frontal point at ``uf`` sits at angle ``asin(uf/R)`` about the vertical axis and projects to
``u = R sin(asin(uf/R) + yaw)``, so features shift sideways and the half turning away is compressed.
Silhouettes (skull, hair mass, ears, neck, clothes) are drawn in head coordinates; surface details (eyes, brows,
nose, mouth, jaw line, hairline, skin texture, glasses) in frontal ones, the nose and the glasses with an extra
parallax for their depth.

Shapes are evaluated analytically on the pixel grid and box-filtered over the pixel: an approximate signed
distance in pixels becomes coverage through a one-pixel ramp; strokes and bands use the exact 1-D box overlap, so
sub-pixel features fade rather than pop; soft shading blobs are Gaussians widened by the pixel's variance; hair
strands and skin texture (value noise on seeded grids, one seed per octave) are blurred or area-averaged down
to the pixel density before sampling. A 16 px render is thus a proper low-resolution version of a 1024 px one.

Layers are composited as albedo plus three masks (skin, gloss, figure). The skin texture (mottling, freckles,
grain, pores) then modulates the skin, and the figure is lit with wrapped Lambertian shading from the implicit
normal of a head ellipsoid, ambient light, a little specular gloss and a colour-temperature tint. Output is RGB
uint8. Everything is deterministic: the same parameters give byte-identical images.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterator

import cv2
import numpy as np

__all__ = [
    "Identity", "Conditions", "SyntheticFace", "sample_conditions", "render_face", "face_landmarks",
    "generate_faces", "identity_seed", "HAIR_STYLES", "MIN_SIZE", "MAX_SIZE", "FACE_UNIT", "EYE_LINE",
]

MIN_SIZE, MAX_SIZE = 16, 1024
HAIR_STYLES = ("short", "long", "bald", "fringe")
FACE_UNIT = 0.32      # one face unit as a fraction of the image width
EYE_LINE = -0.3125    # v of the eye centres: 0.5 - 0.3125 * 0.32 = 0.40 of the image height
YAW_LIMIT, ROLL_LIMIT = 30.0, 20.0

RGB = tuple[float, float, float]
# light -> dark skin albedo (sRGB); identities are sampled uniformly along this scale
_SKIN = np.array([(241, 212, 190), (228, 185, 153), (206, 156, 118), (178, 126, 88),
                  (145, 98, 66), (112, 72, 48), (82, 52, 36), (58, 38, 28)], np.float64) / 255
# palettes: (colour, weight next to the lightest skin, weight next to the darkest skin)
_HAIR = [((28, 22, 20), 1, 6), ((58, 38, 28), 2, 3), ((96, 64, 40), 2, 0.6), ((140, 100, 62), 1.5, 0.1),
         ((130, 58, 30), 0.7, 0.05), ((205, 170, 110), 1.5, 0.05), ((170, 166, 160), 0.6, 0.3)]
_IRIS = [((60, 36, 20), 1, 6), ((100, 62, 30), 2, 2), ((130, 100, 50), 1, 0.2),
         ((90, 120, 70), 0.8, 0.05), ((80, 120, 170), 1.5, 0.05), ((120, 130, 140), 0.7, 0.05)]
_FRAMES = [(0.06, 0.05, 0.05), (0.2, 0.12, 0.07), (0.1, 0.12, 0.25), (0.3, 0.08, 0.1), (0.22, 0.22, 0.24)]

# Valid ranges (wider than what the samplers draw); the renderer is designed and tested inside them.
_IDENTITY_RANGES = {
    "head_width": (0.8, 1.2), "head_height": (0.8, 1.2), "jaw": (1.5, 4.0), "chin_length": (0.3, 0.9),
    "skin_tone_level": (0.0, 1.0), "eye_spacing": (0.3, 0.55), "eye_width": (0.1, 0.26), "eye_height": (0.03, 0.11),
    "eye_tilt": (-15.0, 15.0), "brow_gap": (0.1, 0.3), "brow_thickness": (0.01, 0.1), "brow_arch": (0.0, 0.1),
    "nose_length": (0.3, 0.75), "nose_width": (0.08, 0.3), "philtrum": (0.1, 0.35), "mouth_width": (0.18, 0.45),
    "upper_lip": (0.02, 0.12), "lower_lip": (0.02, 0.14), "hairline": (-1.4, -0.6), "hair_volume": (0.0, 0.3),
    "hair_parting": (-0.6, 0.6), "ear_size": (0.6, 1.4), "ear_height": (-0.3, 0.2), "freckles": (0.0, 1.0),
}
_CONDITION_RANGES = {
    "yaw": (-YAW_LIMIT, YAW_LIMIT), "roll": (-ROLL_LIMIT, ROLL_LIMIT), "smile": (0.0, 1.0), "mouth_opening": (0.0, 1.0),
    "glasses_shape": (1.5, 6.0), "glasses_thickness": (0.005, 0.06), "light_azimuth": (-90.0, 90.0),
    "light_elevation": (-60.0, 80.0), "light_intensity": (0.0, 2.0), "ambient": (0.0, 1.0),
    "color_temperature": (2000.0, 12000.0), "background_angle": (-360.0, 360.0), "shift_x": (-0.15, 0.15),
    "shift_y": (-0.15, 0.15), "scale": (0.7, 1.3),
}


def _check_int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return int(value)


def _check_range(name: str, value: Any, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and lo <= value <= hi):
        raise ValueError(f"{name} must be a number in [{lo}, {hi}], got {value!r}")


def _check_fields(record: Any, ranges: dict[str, tuple[float, float]], colours: tuple[str, ...]) -> None:
    for name, (lo, hi) in ranges.items():
        _check_range(name, getattr(record, name), lo, hi)
    for name in colours:
        value = getattr(record, name)
        if not (isinstance(value, tuple) and len(value) == 3 and all(isinstance(c, float) and 0 <= c <= 1
                                                                     for c in value)):
            raise ValueError(f"{name} must be a tuple of 3 floats in [0, 1], got {value!r}")


def _rgb(values: Any) -> RGB:
    r, g, b = (float(np.clip(c, 0.0, 1.0)) for c in values)
    return (r, g, b)


def _pick(rng: np.random.Generator, palette: list, level: float) -> RGB:
    weights = np.array([w0 + (w1 - w0) * level for _, w0, w1 in palette])
    colour = np.array(palette[rng.choice(len(palette), p=weights / weights.sum())][0]) / 255
    return _rgb(colour * rng.uniform(0.9, 1.1, 3))


class _Record:
    """JSON round trip for the frozen parameter records (tuples <-> lists)."""

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain JSON-able values (tuples become lists)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: tuple(float(c) for c in v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass(frozen=True)
class Identity(_Record):
    """Who is in the picture: geometry in face units, colours as sRGB floats in [0, 1]."""

    identity_id: int
    head_width: float       # half cheek-to-cheek width
    head_height: float      # vertical scale of skull and jaw
    jaw: float              # superellipse exponent of the lower face: 2 oval ... 3 square
    chin_length: float      # mouth line to chin
    skin_tone_level: float  # position on the light (0) to dark (1) scale
    skin_tone: RGB          # skin albedo
    eye_spacing: float      # half the distance between the eye centres
    eye_width: float        # half width of an eye opening
    eye_height: float       # half height of an eye opening
    eye_tilt: float         # canthal tilt in degrees, > 0: outer corners up
    iris_rgb: RGB
    brow_gap: float         # brow line above the eye line
    brow_thickness: float
    brow_arch: float
    nose_length: float      # eye line to nostrils
    nose_width: float       # half width at the alae
    philtrum: float         # nostrils to mouth line
    mouth_width: float      # half width of the mouth
    upper_lip: float
    lower_lip: float
    lip_rgb: RGB
    hair_style: str         # one of HAIR_STYLES
    hair_rgb: RGB           # also tints brows and lashes
    hairline: float         # v of the hairline on the midline
    hair_volume: float      # hair thickness around the skull
    hair_parting: float     # u of the parting
    ear_size: float
    ear_height: float       # v of the ear centres
    freckles: float         # 0 none ... 1 dense
    texture_seed: int       # pores, grain, mottling, freckles, moles, hair strands

    def __post_init__(self) -> None:
        _check_int("identity_id", self.identity_id)
        _check_int("texture_seed", self.texture_seed, 0)
        if self.hair_style not in HAIR_STYLES:
            raise ValueError(f"hair_style must be one of {HAIR_STYLES}, got {self.hair_style!r}")
        _check_fields(self, _IDENTITY_RANGES, ("skin_tone", "iris_rgb", "lip_rgb", "hair_rgb"))

    @classmethod
    def from_seed(cls, seed: int, *, identity_id: int | None = None) -> Identity:
        """Sample an identity deterministically from ``seed`` (``identity_id`` defaults to the seed)."""
        rng = np.random.default_rng(_check_int("seed", seed, 0))
        u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
        level = u(0, 1)
        pos = level * (len(_SKIN) - 1)
        k = min(int(pos), len(_SKIN) - 2)
        skin = (_SKIN[k] + (pos - k) * (_SKIN[k + 1] - _SKIN[k])) * rng.normal(1, (0.02, 0.025, 0.05))
        lip = skin * np.array([0.9, 0.6, 0.64]) * rng.uniform(0.9, 1.08, 3)
        return cls(
            identity_id=seed if identity_id is None else _check_int("identity_id", identity_id),
            head_width=u(0.92, 1.06), head_height=u(0.94, 1.06), jaw=u(1.9, 3.0), chin_length=u(0.52, 0.68),
            skin_tone_level=level, skin_tone=_rgb(skin),
            eye_spacing=u(0.41, 0.47), eye_width=u(0.17, 0.21), eye_height=u(0.06, 0.08), eye_tilt=u(-5, 9),
            iris_rgb=_pick(rng, _IRIS, level), brow_gap=u(0.17, 0.24), brow_thickness=u(0.035, 0.065),
            brow_arch=u(0.0, 0.06), nose_length=u(0.46, 0.6), nose_width=u(0.14, 0.2), philtrum=u(0.19, 0.26),
            mouth_width=u(0.26, 0.34), upper_lip=u(0.045, 0.075), lower_lip=u(0.055, 0.095), lip_rgb=_rgb(lip),
            hair_style=HAIR_STYLES[rng.choice(4, p=[0.4, 0.3, 0.12, 0.18])], hair_rgb=_pick(rng, _HAIR, level),
            hairline=u(-1.15, -0.85), hair_volume=u(0.06, 0.2), hair_parting=u(-0.45, 0.45),
            ear_size=u(0.85, 1.15), ear_height=u(-0.12, 0.02), freckles=u(0.3, 1.0) if rng.random() < 0.3 else 0.0,
            texture_seed=int(rng.integers(0, 2**31)),
        )


@dataclass(frozen=True)
class Conditions(_Record):
    """How the identity is photographed. The defaults are a neutral, frontal, evenly lit portrait."""

    yaw: float = 0.0                # degrees, > 0: the face turns towards the image right
    roll: float = 0.0               # degrees, in-plane, > 0: clockwise in the image
    smile: float = 0.0              # 0 neutral ... 1 broad (corners up, teeth, cheeks raised, eyes squint)
    mouth_opening: float = 0.0      # 0 closed ... 1 wide open (dark interior, teeth)
    eyeglasses: bool = False
    glasses_rgb: RGB = (0.06, 0.05, 0.05)
    glasses_shape: float = 3.0      # rim superellipse exponent: 2 round ... 4 rectangular
    glasses_thickness: float = 0.022
    light_azimuth: float = 0.0      # degrees, > 0: light from the image right
    light_elevation: float = 25.0   # degrees, > 0: light from above
    light_intensity: float = 0.75
    ambient: float = 0.4
    color_temperature: float = 6500.0  # kelvin; lower is warmer
    background_rgb: RGB = (0.55, 0.6, 0.65)
    background_rgb2: RGB = (0.4, 0.45, 0.5)
    background_angle: float = 90.0  # degrees: direction of the gradient from background_rgb to background_rgb2
    clothing_rgb: RGB = (0.2, 0.3, 0.5)
    shift_x: float = 0.0            # framing jitter, fractions of the image size
    shift_y: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.eyeglasses, bool):
            raise ValueError(f"eyeglasses must be a bool, got {self.eyeglasses!r}")
        _check_fields(self, _CONDITION_RANGES, ("glasses_rgb", "background_rgb", "background_rgb2", "clothing_rgb"))

    @property
    def smiling(self) -> bool:
        return self.smile >= 0.5

    @property
    def mouth_open(self) -> bool:
        return self.mouth_opening >= 0.5

    def attributes(self) -> dict[str, bool]:
        """The binary attribute labels: smiling, mouth_open, eyeglasses."""
        return {"smiling": self.smiling, "mouth_open": self.mouth_open, "eyeglasses": self.eyeglasses}


def sample_conditions(rng: np.random.Generator, *, p_smiling: float = 0.5, p_mouth_open: float = 0.3,
                      p_eyeglasses: float = 0.25, max_yaw: float = 25.0, max_roll: float = 15.0) -> Conditions:
    """Random photo conditions. Amounts avoid the ambiguous middle (smile in [0, .35] or [.55, 1], opening in
    [0, .25] or [.6, 1]) so the derived binary attributes are clear labels."""
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    for name, p in (("p_smiling", p_smiling), ("p_mouth_open", p_mouth_open), ("p_eyeglasses", p_eyeglasses)):
        _check_range(name, p, 0.0, 1.0)
    _check_range("max_yaw", max_yaw, 0.0, YAW_LIMIT)
    _check_range("max_roll", max_roll, 0.0, ROLL_LIMIT)
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    jitter = lambda: float(np.clip(rng.normal(0, 0.012), -0.03, 0.03))  # noqa: E731
    yaw = float(np.clip(rng.normal(0, max_yaw / 2), -max_yaw, max_yaw))
    roll = float(np.clip(rng.normal(0, max_roll / 2.5), -max_roll, max_roll))
    smile = u(0.55, 1.0) if rng.random() < p_smiling else u(0.0, 0.35)
    opening = u(0.6, 1.0) if rng.random() < p_mouth_open else u(0.0, 0.25)
    glasses = bool(rng.random() < p_eyeglasses)
    frame = _rgb(np.array(_FRAMES[rng.integers(len(_FRAMES))]) * rng.uniform(0.8, 1.2))
    bg = rng.uniform(0.15, 0.9, 3) * rng.uniform(0.6, 1.0) + rng.uniform(0, 0.2)
    return Conditions(
        yaw=yaw, roll=roll, smile=smile, mouth_opening=opening, eyeglasses=glasses, glasses_rgb=frame,
        glasses_shape=u(2.0, 4.0), glasses_thickness=u(0.016, 0.032), light_azimuth=u(-60, 60),
        light_elevation=u(0, 50), light_intensity=u(0.6, 0.9), ambient=u(0.3, 0.45), color_temperature=u(4000, 7500),
        background_rgb=_rgb(bg), background_rgb2=_rgb(bg * rng.uniform(0.5, 1.2, 3)), background_angle=u(0, 360),
        clothing_rgb=_rgb(rng.uniform(0.05, 0.8, 3)), shift_x=jitter(), shift_y=jitter(), scale=u(0.95, 1.05),
    )


# ----------------------------------------------------------------------------------------------------------------
# Box-filtered coverage. Coordinates are face units; hx, hy are half a pixel in the same units (hx is an array
# where yaw stretches the grid), so the pixel footprint is [x - hx, x + hx] x [y - hy, y + hy].


def _interval(x, lo, hi, h):
    """Fraction of the box [x-h, x+h] inside [lo, hi]: the exact 1-D box filter of an interval."""
    return np.clip((np.minimum(x + h, hi) - np.maximum(x - h, lo)) / (2 * h), 0.0, 1.0)


def _oval(x, y, hx, hy, cx, cy, ax, ay, *, ay_low=None, n=2.0, ring=None):
    """Coverage of the (super)ellipse |dx/ax|^n + |dy/ay|^n <= 1 (``ay_low``: semi-axis below the centre), or of
    its outline with half-thickness ``ring``. Signed distance ~ (r - 1) / |grad r| in pixels, then a 1-pixel ramp."""
    ayv = ay if ay_low is None else np.where(y < cy, ay, ay_low)
    p, q = np.abs(x - cx) / ax + 1e-6, np.abs(y - cy) / ayv + 1e-6
    if n == 2.0:
        r = np.sqrt(p * p + q * q)
        gp, gq = p / r, q / r
    else:
        r = (p ** n + q ** n) ** (1.0 / n)
        gp, gq = (p / r) ** (n - 1), (q / r) ** (n - 1)
    d = (r - 1.0) / (2 * np.sqrt((gp * hx / ax) ** 2 + (gq * hy / ayv) ** 2))
    h = float(np.min(hy))
    if ring is not None:
        return _interval(d, -ring / (2 * h), ring / (2 * h), 0.5)
    # A pixel sees at most the inradius on either side: shapes thinner than a pixel fade instead of popping, and
    # tiny ones also lose length, so their mass stays ~ their area.
    small, large = min(ax, ay, ay_low or ay) / (2 * h), max(ax, ay) / (2 * h)
    return _interval(np.maximum(d, -small), -2 * small, 0.0, 0.5) * min(1.0, 2 * large)


def _band(x, y, hx, hy, x0, x1, lo, hi, slope=0.0):
    """Coverage of {x0 < x < x1, lo(x) < y < hi(x)}; ``slope`` widens the vertical footprint for slanted edges."""
    return _interval(y, lo, hi, hy * np.sqrt(1 + np.square(slope))) * _interval(x, x0, x1, hx)


def _blob(x, y, hx, hy, cx, cy, sx, sy):
    """Soft Gaussian bump (peak 1), prefiltered: its variance grows by the pixel box's, its mass is kept."""
    vx, vy = sx * sx + hx * hx / 3, sy * sy + hy * hy / 3
    return np.sqrt(sx * sx * sy * sy / (vx * vy)) * np.exp(-0.5 * ((x - cx) ** 2 / vx + (y - cy) ** 2 / vy))


class _Frame:
    """The pixel grid and the chain image -> head (u, v) -> frontal (uf, v); J = d uf / d u (yaw stretch)."""

    def __init__(self, size: int, ident: Identity, cond: Conditions, *, grid: bool = True):
        self.size, self.cond = size, cond
        self.k = FACE_UNIT * cond.scale * size          # pixels per face unit
        self.h = np.float32(0.5 / self.k)               # half a pixel in face units
        self.cr, self.sr = math.cos(math.radians(cond.roll)), math.sin(math.radians(cond.roll))
        self.R, self.yaw = 1.3 * ident.head_width, math.radians(cond.yaw)
        if not grid:
            return
        c = (np.arange(size, dtype=np.float32) + 0.5) / size
        x = ((c - 0.5 - cond.shift_x) / (FACE_UNIT * cond.scale))[None, :]
        y = ((c - 0.5 - cond.shift_y) / (FACE_UNIT * cond.scale))[:, None]
        self.u = (self.cr * x + self.sr * y).astype(np.float32)
        self.v = (-self.sr * x + self.cr * y).astype(np.float32)
        psi = np.arcsin(np.clip(self.u / self.R, -1, 1))
        a = np.clip(psi - self.yaw, -np.pi / 2, np.pi / 2)
        self.uf = (self.R * np.sin(a)).astype(np.float32)
        self.J = np.clip(np.cos(a) / np.maximum(np.cos(psi), 0.05), 0.05, 5.0).astype(np.float32)

    def to_pixels(self, uf, v, *, depth: float = 0.0, frontal: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Forward map of points to pixel coordinates (OpenCV convention: pixel (0, 0) is centred at 0.0)."""
        uf, v = np.asarray(uf, np.float64), np.asarray(v, np.float64)
        u = self.R * np.sin(np.arcsin(np.clip(uf / self.R, -1, 1)) + self.yaw) if frontal else uf
        u = u + depth * math.sin(self.yaw)
        x, y, s = self.cr * u - self.sr * v, self.sr * u + self.cr * v, FACE_UNIT * self.cond.scale
        return (x * s + 0.5 + self.cond.shift_x) * self.size - 0.5, (y * s + 0.5 + self.cond.shift_y) * self.size - 0.5

    def view(self, u0: float, u1: float, v0: float, v1: float, *, frontal: bool = True, depth: float = 0.0) -> _View:
        """Window covering the rectangle [u0, u1] x [v0, v1] (frontal or head coords); empty when off-image."""
        px, py = self.to_pixels([u0, u1, u0, u1], [v0, v0, v1, v1], depth=depth, frontal=frontal)
        x0, x1 = max(0, math.floor(px.min()) - 2), min(self.size, math.ceil(px.max()) + 3)
        y0, y1 = max(0, math.floor(py.min()) - 2), min(self.size, math.ceil(py.max()) + 3)
        return _View(self, (slice(y0, max(y0, y1)), slice(x0, max(x0, x1))), depth)


class _View:
    """A window of the frame: head coords (u, v), frontal uf (with depth parallax), half-pixel sizes hx, h."""

    def __init__(self, frame: _Frame, box: tuple[slice, slice], depth: float):
        self.box, self.h = box, frame.h
        self.u, self.v, J = frame.u[box], frame.v[box], frame.J[box]
        self.uf = frame.uf[box] - (depth * math.sin(frame.yaw)) * J if depth else frame.uf[box]
        self.hx = frame.h * J


class _Canvas:
    """Albedo plus the masks the lighting pass needs: skin (gets texture), gloss (specular), fig (lit figure)."""

    def __init__(self, frame: _Frame, cond: Conditions):
        ang = math.radians(cond.background_angle)
        t = np.clip(0.5 + 0.5 * (math.cos(ang) * frame.u + math.sin(ang) * frame.v) / 1.6, 0, 1)[..., None]
        c1, c2 = np.array(cond.background_rgb, np.float32), np.array(cond.background_rgb2, np.float32)
        self.background = (c1 + t * (c2 - c1)).astype(np.float32)
        self.albedo = self.background.copy()
        self.skin, self.gloss, self.fig = (np.zeros(frame.u.shape, np.float32) for _ in range(3))

    def paint(self, w: _View, alpha, rgb, *, skin=0.0, gloss=0.0, fig=1.0) -> None:
        """Composite ``rgb`` (a colour or per-pixel colours) over the window with coverage ``alpha``; a mask
        value of None leaves that mask alone (shading that only recolours)."""
        if w.u.size == 0:
            return
        a = np.asarray(alpha, np.float32)
        albedo = self.albedo[w.box]
        delta = np.asarray(rgb, np.float32) - albedo
        delta *= a[..., None]
        albedo += delta
        for mask, value in ((self.skin, skin), (self.gloss, gloss), (self.fig, fig)):
            if value is not None:
                m = mask[w.box]
                m += a * (value - m)

    def shade(self, f: _Frame, amount: float, cx: float, cy: float, sx: float, sy: float, rgb, *,
              depth: float = 0.0) -> None:
        """Recolour towards ``rgb`` with a soft Gaussian (relief, blush, shadows) at frontal (cx, cy)."""
        w = f.view(cx - 3.5 * sx, cx + 3.5 * sx, cy - 3.5 * sy, cy + 3.5 * sy, depth=depth)
        self.paint(w, amount * _blob(w.uf, w.v, w.hx, w.h, cx, cy, sx, sy), rgb, skin=None, gloss=None, fig=None)


# ----------------------------------------------------------------------------------------------------------------
# The face, layer by layer (back to front).


@dataclass(frozen=True)
class _Layout:
    """Positions derived from identity and expression (frontal face units)."""

    vc: float      # widest line of the head: skull above, jaw below
    btop: float    # skull height above vc
    chin: float
    vn: float      # nostril line
    vm: float      # mouth line (centre of the lips)
    mw: float      # mouth half width (a smile widens it)
    lift: float    # how far the mouth corners rise above the centre
    gap: float     # lip opening at the centre
    thin: float    # lip thickness factor (a smile stretches the lips)
    eh_top: float  # eye opening above / below the eye line (a smile squints)
    eh_bot: float

    @classmethod
    def of(cls, i: Identity, c: Conditions) -> _Layout:
        s, o = c.smile, c.mouth_opening
        vn = EYE_LINE + i.nose_length
        vm = vn + i.philtrum
        return cls(vc=-0.18 * i.head_height, btop=1.38 * i.head_height, chin=vm + i.chin_length * i.head_height,
                   vn=vn, vm=vm, mw=i.mouth_width * (1 + 0.18 * s + 0.05 * o), lift=0.008 + 0.11 * s - 0.015 * o,
                   gap=0.006 + 0.2 * o * o + 0.045 * s * s, thin=1 - 0.3 * s,
                   eh_top=i.eye_height * (1.15 - 0.2 * s), eh_bot=i.eye_height * (0.85 - 0.4 * s))

    def hair_cap(self, i: Identity) -> tuple[float, float]:
        return i.head_width + i.hair_volume, self.btop + 1.3 * i.hair_volume


_STRAND_BASE, _STRAND_LEVELS = 1.5 / 720, 14


def _strands(ident: Identity) -> np.ndarray:
    """Hair-strand noise over the angle about the crown (720 columns per turn); row k is blurred by
    2**(k/2) times the base, so each pixel reads the blur matching its footprint (a 1-D mip map)."""
    n = 720
    spec = np.fft.rfft(np.random.default_rng([ident.texture_seed, 99]).standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / n)                              # cycles per turn
    spec[f < 90] = 0                                             # fine strands, not wedges
    rows = [np.fft.irfft(spec * np.exp(-2 * (math.pi * f * _STRAND_BASE * 2 ** (k / 2)) ** 2), n)
            for k in range(_STRAND_LEVELS)]
    return (np.array(rows + rows[-1:]) / rows[0].std()).astype(np.float32)


def _hair_rgb(w: _View, ident: Identity, strands: np.ndarray, crown: float) -> np.ndarray:
    """Hair albedo: strands radiating from the crown, and a sheen band (hair's anisotropic highlight)."""
    if w.u.size == 0:
        return np.zeros((*w.u.shape, 3), np.float32)
    du, dv = w.uf - ident.hair_parting, w.v - crown
    r = np.sqrt(du * du + dv * dv) + 1e-3
    angle = np.arctan2(du, dv) * np.float32(strands.shape[1] / (2 * np.pi))
    blur = 1.5 * w.h / (2 * np.pi * r)                            # 3/4 pixel, in turns
    level = np.clip(np.log2(1 + (blur / _STRAND_BASE) ** 2), 0, _STRAND_LEVELS - 1).astype(np.float32)
    s = np.clip(cv2.remap(strands, angle, level, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP), -2.5, 2.5)
    sheen = _blob(r, 0.0, w.h, w.h, 0.75, 0.0, 0.12, 1.0)
    return np.float32(ident.hair_rgb) * (1 + (0.15 + 0.2 * sheen) * s + 0.25 * sheen)[..., None]


def _draw_back_hair(cv: _Canvas, f: _Frame, i: Identity, lay: _Layout, strands: np.ndarray) -> None:
    if i.hair_style == "bald":
        return
    ax, ay = lay.hair_cap(i)
    long = i.hair_style == "long"   # long hair falls to the shoulders, square-ish; short hair tucks behind the head
    bottom = 1.3 if long else lay.vc + 0.35
    w = f.view(-ax - 0.2, ax + 0.2, lay.vc - ay, bottom + 0.1, frontal=False)
    below = _oval(w.u, w.v, w.h, w.h, 0, lay.vc, ax, bottom - lay.vc, n=4.0 if long else 2.0)
    cov = np.where(w.v < lay.vc, _oval(w.u, w.v, w.h, w.h, 0, lay.vc, ax, ay), below)
    cv.paint(w, cov, _hair_rgb(w, i, strands, lay.vc - ay) * 0.7, gloss=0.4)


def _draw_body(cv: _Canvas, f: _Frame, i: Identity, c: Conditions, lay: _Layout, skin: np.ndarray) -> None:
    nw = 0.5 * i.head_width
    w = f.view(-nw - 0.1, nw + 0.1, 0.0, 2.2, frontal=False)
    cv.paint(w, _band(w.u, w.v, w.h, w.h, -nw, nw, 0.2, 3.0), skin * 0.8, skin=1.0, gloss=0.3)
    cv.shade(f, 0.7, 0, lay.chin + 0.02, 0.6, 0.12, skin * 0.4)   # the head's shadow on the neck
    w = f.view(-2.6, 2.6, lay.chin, 4.0, frontal=False)
    shoulders = _oval(w.u, w.v, w.h, w.h, 0, lay.chin + 1.25, 2.3, 1.0)
    neckline = _oval(w.u, w.v, w.h, w.h, 0, lay.chin + 0.27, 0.5, 0.2)
    cv.paint(w, shoulders * (1 - neckline), c.clothing_rgb, gloss=0.1)


def _draw_ears(cv: _Canvas, f: _Frame, i: Identity, skin: np.ndarray) -> None:
    if i.hair_style == "long":   # covered by the hair
        return
    for s in (-1, 1):  # the ear turning towards the camera shows more
        ax, ay = 0.13 * i.ear_size * max(0.3, 1 - 1.5 * s * math.sin(f.yaw)), 0.3 * i.ear_size
        cx, cy = s * (i.head_width + 0.02), i.ear_height
        w = f.view(cx - 0.3, cx + 0.3, cy - ay - 0.05, cy + ay + 0.05, frontal=False)
        cv.paint(w, _oval(w.u, w.v, w.h, w.h, cx, cy, ax, ay, ay_low=0.8 * ay), skin * 0.9, skin=1.0, gloss=0.5)
        inner = _oval(w.u, w.v, w.h, w.h, cx + s * 0.25 * ax, cy + 0.02, 0.5 * ax, 0.6 * ay)
        cv.paint(w, 0.5 * inner, skin * 0.6, skin=None, gloss=None)


def _draw_head(cv: _Canvas, f: _Frame, i: Identity, lay: _Layout, skin: np.ndarray) -> None:
    """Skull: an ellipse above the widest line; jaw: a superellipse below it (same width where they meet)."""
    hw = i.head_width
    w = f.view(-hw - 0.1, hw + 0.1, lay.vc - lay.btop - 0.05, lay.vc + 0.05, frontal=False)
    cv.paint(w, _oval(w.u, w.v, w.h, w.h, 0, lay.vc, hw, lay.btop) * (w.v < lay.vc), skin, skin=1.0, gloss=0.6)
    w = f.view(-hw - 0.1, hw + 0.1, lay.vc - 0.05, lay.chin + 0.05, frontal=False)
    lam = 0.5 * np.clip((w.v - lay.vc) / (lay.chin - lay.vc), 0, 1)  # the jaw follows the face when it turns
    jaw = _oval(w.u + lam * (w.uf - w.u), w.v, w.h + lam * (w.hx - w.h), w.h, 0, lay.vc, hw, lay.chin - lay.vc, n=i.jaw)
    cv.paint(w, jaw * (w.v >= lay.vc), skin, skin=1.0, gloss=0.6)


def _draw_relief(cv: _Canvas, f: _Frame, i: Identity, c: Conditions, lay: _Layout, skin: np.ndarray) -> None:
    """Soft relief: eye sockets, cheeks (raised by a smile), nose sides, nasolabial folds, chin; then moles."""
    dark, blush = skin * 0.7, 0.5 * (skin + np.float32(i.lip_rgb))
    away = 1.0 if c.light_azimuth < 0 else -1.0  # the nose side away from the light
    for s in (-1, 1):
        cv.shade(f, 0.25, s * i.eye_spacing, EYE_LINE - 0.03, 0.9 * i.eye_width, 0.1, dark)
        cv.shade(f, 0.1 + 0.15 * c.smile, s * 0.5, lay.vn - 0.03 - 0.08 * c.smile, 0.17, 0.11, blush)
        cv.shade(f, 0.3 if s == away else 0.12, s * 0.1, (EYE_LINE + lay.vn) / 2, 0.04, 0.2, dark, depth=0.1)
        v0, v1 = lay.vn - 0.04, lay.vm + 0.08   # nasolabial fold: nose wing to beyond the mouth corner
        w = f.view(-lay.mw - 0.3, lay.mw + 0.3, v0, v1)
        t = np.clip((w.v - v0) / (v1 - v0), 0, 1)
        mid = s * (i.nose_width + 0.05 + (lay.mw + 0.01 - i.nose_width) * t + 0.06 * t * (1 - t))
        fold = _band(w.v, w.uf, w.h, w.hx, v0, v1, mid - 0.02, mid + 0.02, slope=0.5) * np.sin(np.pi * t)
        cv.paint(w, (0.12 + 0.3 * c.smile) * fold, dark, skin=None, gloss=None, fig=None)
    cv.shade(f, 0.3, 0, lay.vn + 0.04, 0.13, 0.03, dark)                                  # under the nose
    cv.shade(f, 0.15, 0, (lay.vn + lay.vm) / 2, 0.05, 0.06, dark)                         # philtrum
    cv.shade(f, 0.2, 0, lay.vm + lay.gap / 2 + i.lower_lip + 0.05, 0.14, 0.025, dark)    # under the lower lip
    cv.shade(f, 0.25, 0, lay.chin - 0.1, 0.3, 0.08, np.minimum(skin * 1.15, 1))           # chin highlight
    rng = np.random.default_rng([i.texture_seed, 7])
    for _ in range(min(3, rng.poisson(0.8))):
        mu, mv, r = rng.uniform(-0.75, 0.75), rng.uniform(-0.6, 0.9), rng.uniform(0.008, 0.018)
        w = f.view(mu - 0.05, mu + 0.05, mv - 0.05, mv + 0.05)
        cv.paint(w, 0.8 * _oval(w.uf, w.v, w.hx, w.h, mu, mv, r, r), skin * 0.45, skin=0.3, gloss=None, fig=None)


def _draw_eyes(cv: _Canvas, f: _Frame, i: Identity, c: Conditions, lay: _Layout, skin: np.ndarray) -> None:
    """Almond openings (sclera, iris, pupil, catchlight), lid shadow, lashes, lid lines; then the brows."""
    lash, brow = np.float32(i.hair_rgb) * 0.2 + 0.02, np.float32(i.hair_rgb) * 0.6 + skin * 0.1
    tilt, ew = math.tan(math.radians(i.eye_tilt)), i.eye_width
    for s in (-1, 1):
        cx = s * i.eye_spacing
        w = f.view(cx - ew - 0.1, cx + ew + 0.1, EYE_LINE - i.brow_gap - i.brow_thickness - 0.08, EYE_LINE + 0.15)
        x, y, hx, h = w.uf, w.v, w.hx, w.h
        xn = np.clip((x - cx) / ew, -1, 1)
        xo, prof = s * xn, np.sqrt(1 - xn * xn)        # xo: -1 at the inner corner, +1 at the outer one
        mid = EYE_LINE - tilt * xo * ew
        top, bot = mid - lay.eh_top * prof * (1 - 0.15 * xo), mid + lay.eh_bot * prof * (1 + 0.1 * xo)
        slope = np.clip(lay.eh_top * np.abs(xn) / (ew * np.maximum(prof, 0.05)), 0, 3) + abs(tilt)
        eye = _band(x, y, hx, h, cx - ew, cx + ew, top, bot, slope)
        cv.paint(w, eye, (0.9, 0.87, 0.83), gloss=0.6)
        ri, ic = 0.42 * ew, cx - 0.35 * ew * math.sin(f.yaw)   # the eyes keep looking at the camera
        catch = (ic + 0.35 * ri * math.sin(math.radians(c.light_azimuth)), EYE_LINE - 0.4 * ri)
        for colour, r, (px, py) in ((np.float32(i.iris_rgb) * 0.45, ri, (ic, EYE_LINE)),
                                    (i.iris_rgb, 0.78 * ri, (ic, EYE_LINE)),
                                    ((0.03, 0.03, 0.03), 0.38 * ri, (ic, EYE_LINE)), ((1, 1, 1), 0.14 * ri, catch)):
            cv.paint(w, eye * _oval(x, y, hx, h, px, py, r, r), colour, gloss=0.6)
        cv.paint(w, 0.35 * eye * _interval(y, top, top + 0.6 * lay.eh_top, h), (0.1, 0.08, 0.08), skin=None, gloss=None)
        lt = 0.01 + 0.008 * (xo + 1)
        cv.paint(w, _band(x, y, hx, h, cx - ew * 1.03, cx + ew * 1.06, top - lt, top + 0.3 * lt, slope), lash)
        cv.paint(w, 0.45 * _band(x, y, hx, h, cx - ew, cx + ew, bot - 0.005, bot + 0.01, slope), skin * 0.6, skin=None)
        crease = top - 0.035 - 0.025 * prof
        lid = _band(x, y, hx, h, cx - 0.85 * ew, cx + ew, crease - 0.012, crease, slope)
        cv.paint(w, 0.3 * lid, skin * 0.65, skin=None)
        b0, b1 = cx - s * 1.0 * ew, cx + s * 1.2 * ew   # brow: inner end (t=0) to tail (t=1), peak near t=0.62
        t = np.clip((x - b0) / (b1 - b0), 0, 1)
        line = EYE_LINE - i.brow_gap - i.brow_arch * (1 - ((t - 0.62) / 0.62) ** 2) + 0.03 * t
        th = i.brow_thickness * (1.1 - 0.6 * t) * np.sqrt(np.clip(t / 0.1, 0.05, 1) * np.clip((1 - t) / 0.3, 0.05, 1))
        cv.paint(w, 0.9 * _band(x, y, hx, h, min(b0, b1), max(b0, b1), line - th / 2, line + th / 2, 0.6), brow)


def _draw_nose(cv: _Canvas, f: _Frame, i: Identity, c: Conditions, lay: _Layout, skin: np.ndarray) -> None:
    nw, vn = i.nose_width, lay.vn
    tip = 0.2 * nw * math.sin(math.radians(c.light_azimuth))
    cv.shade(f, 0.4, tip, vn - 0.08, 0.06, 0.05, np.minimum(skin * 1.3, 1), depth=0.2)
    w = f.view(-nw - 0.1, nw + 0.1, vn - 0.2, vn + 0.08, depth=0.2)
    x, y, hx, h = w.uf, w.v, w.hx, w.h
    for s in (-1, 1):  # nose wings: shading, an outer crease, the nostril
        cx, cy = s * 0.72 * nw, vn - 0.04
        cv.paint(w, 0.35 * _blob(x, y, hx, h, cx, cy, 0.05, 0.04), skin * 0.7, skin=None, gloss=None, fig=None)
        crease = _oval(x, y, hx, h, cx, cy + 0.005, 0.3 * nw, 0.05, ring=0.007)
        crease *= _interval(s * (x - cx), 0.1 * nw, 1, hx)   # the outer side of the wing only
        cv.paint(w, 0.4 * crease, skin * 0.55, skin=None, gloss=None, fig=None)
        cv.paint(w, 0.85 * _oval(x, y, hx, h, s * 0.4 * nw, vn - 0.005, 0.24 * nw, 0.022), skin * 0.28, skin=0.2)


def _draw_mouth(cv: _Canvas, f: _Frame, i: Identity, lay: _Layout, skin: np.ndarray) -> None:
    """Lips around a centre line whose corners rise with a smile; the opening shows a dark interior and teeth."""
    mw, lip, ul, ll = lay.mw, np.float32(i.lip_rgb), i.upper_lip * lay.thin, i.lower_lip
    w = f.view(-mw - 0.05, mw + 0.05, lay.vm - lay.gap / 2 - ul - 0.05, lay.vm + lay.gap / 2 + ll + 0.05, depth=0.1)
    x, y, hx, h = w.uf, w.v, w.hx, w.h
    xn = np.clip(x / mw, -1, 1)
    prof = np.sqrt(1 - xn * xn)
    mid, g = lay.vm - lay.lift * xn * xn, lay.gap * prof ** 0.7 / 2
    bow = 1 - 0.3 * np.exp(-(xn / 0.12) ** 2) + 0.1 * np.exp(-((np.abs(xn) - 0.25) / 0.12) ** 2)  # cupid's bow
    slope = np.clip(2 * lay.lift * np.abs(xn) / mw + (ul + ll) * np.abs(xn) / (mw * np.maximum(prof, 0.1)), 0, 3)
    band = lambda lo, hi: _band(x, y, hx, h, -mw, mw, lo, hi, slope)  # noqa: E731
    cv.paint(w, band(mid - g - ul * prof * bow, mid - g), lip * 0.85, skin=0.4, gloss=1.0)
    cv.paint(w, band(mid + g, mid + g + ll * prof ** 0.8), lip, skin=0.4, gloss=1.5)
    shine = _blob(x, y, hx, h, 0, lay.vm + lay.gap / 2 + 0.45 * ll, 0.35 * mw, 0.2 * ll)
    cv.paint(w, 0.2 * shine, np.minimum(lip * 1.5, 1), skin=None, gloss=None)
    cv.paint(w, band(mid - g, mid + g), (0.2, 0.05, 0.06), gloss=0.5)
    tooth = np.clip(0.45 * g, 0, 0.055)
    cv.paint(w, band(mid - g, mid - g + tooth) * _interval(x, -0.72 * mw, 0.72 * mw, hx), (0.92, 0.89, 0.8), gloss=0.8)
    cv.paint(w, band(mid + g - 0.5 * tooth, mid + g) * _interval(x, -0.5 * mw, 0.5 * mw, hx), (0.8, 0.75, 0.68))
    for s in (-1, 1):
        corner = _blob(x, y, hx, h, s * mw, lay.vm - lay.lift, 0.02, 0.012)
        cv.paint(w, 0.35 * corner, skin * 0.5, skin=None, gloss=None)


def _draw_front_hair(cv: _Canvas, f: _Frame, i: Identity, lay: _Layout, strands: np.ndarray) -> None:
    """The hair cap above the hairline (or a fringe), long hair's locks beside the face, the parting."""
    if i.hair_style == "bald":
        return
    hw, (ax, ay) = i.head_width, lay.hair_cap(i)
    w = f.view(-ax - 0.2, ax + 0.2, lay.vc - ay, 1.35 if i.hair_style == "long" else lay.vc + 0.2, frontal=False)
    x, y, hx, h = w.uf, w.v, w.hx, w.h
    cap = _oval(w.u, y, h, h, 0, lay.vc, ax, ay)
    if i.hair_style == "fringe":  # jagged strand tips just above the brows
        saw = 1 - np.abs(2 * ((x * 7 + i.texture_seed % 97 / 97) % 1.0) - 1)
        line = EYE_LINE - 0.7 * i.brow_gap - 0.04 - 0.05 * saw + 0.9 * np.maximum(np.abs(x) - 0.65 * hw, 0)
    else:  # an arch dropping to the temples
        side = np.clip((np.abs(x) / hw - 0.5) / 0.5, 0, 1)
        line = i.hairline + 0.2 * (x / hw) ** 2 + (lay.vc + 0.1 - i.hairline - 0.2) * side * side * (3 - 2 * side)
    cov = cap * _interval(y, -np.inf, line, h * 1.5)
    if i.hair_style == "long":  # locks falling beside the face, over the ears
        outline = np.where(y < lay.vc, cap, _oval(w.u, y, h, h, 0, lay.vc, ax, 1.3 - lay.vc, n=4.0))
        for s in (-1, 1):
            lock = _band(y, s * w.u, h, h, lay.vc - 0.4, 1.3, 0.86 * hw + 0.06 * np.maximum(y - lay.vc, 0), ax + 0.2)
            cov = np.maximum(cov, lock * outline)
    cv.paint(w, cov, _hair_rgb(w, i, strands, lay.vc - ay), gloss=0.4)
    if i.hair_style in ("short", "long"):
        part = _interval(x, i.hair_parting - 0.01, i.hair_parting + 0.01, hx) * _interval(y, -np.inf, i.hairline, h)
        cv.paint(w, 0.6 * cov * part, np.float32(i.hair_rgb) * 0.45, gloss=None)


def _draw_glasses(cv: _Canvas, f: _Frame, i: Identity, c: Conditions) -> None:
    """Rims (superellipse outlines), bridge and arms in the frame colour; faintly tinted glossy lenses."""
    gx, gw, gh = i.eye_spacing, i.eye_width + 0.12, 0.19
    cy, t, edge, n = EYE_LINE + 0.015, c.glasses_thickness, 0.97 * i.head_width, c.glasses_shape
    for s in (-1, 1):
        w = f.view(s * gx - gw - 0.03, s * gx + gw + 0.03, cy - gh - 0.03, cy + gh + 0.03, depth=0.12)
        lens = _oval(w.uf, w.v, w.hx, w.h, s * gx, cy, gw, gh, n=n)
        cv.paint(w, 0.12 * lens, (0.8, 0.85, 0.9), skin=None, gloss=1.0, fig=None)
        cv.paint(w, _oval(w.uf, w.v, w.hx, w.h, s * gx, cy, gw, gh, n=n, ring=t / 2), c.glasses_rgb, gloss=1.0)
        x0, x1 = sorted((s * (gx + gw - 0.01), s * edge))
        w = f.view(x0, x1, cy - 0.06 - t, cy - 0.06 + t, depth=0.12)
        cv.paint(w, _band(w.uf, w.v, w.hx, w.h, x0, x1, cy - 0.06 - t / 2, cy - 0.06 + t / 2), c.glasses_rgb, gloss=1.0)
    inner = gx - gw + 0.01
    w = f.view(-inner, inner, cy - 0.05 - t, cy - 0.02 + t, depth=0.12)
    arch = cy - 0.05 + 0.03 * np.square(np.clip(w.uf / inner, -1, 1))
    cv.paint(w, _band(w.uf, w.v, w.hx, w.h, -inner, inner, arch - t / 2, arch + t / 2, 0.2), c.glasses_rgb, gloss=1.0)


# Skin texture octaves: (grid size, blur in texels, amplitude, RGB weights, kind). Grids cover frontal
# [-_TEX_SPAN, _TEX_SPAN]^2; each octave has its own seed and zero mean, so octaves far below the pixel size can be
# skipped without changing the others (the texture is the same at every resolution, only more or less averaged).
_TEX_SPAN = 1.7
_OCTAVES = ((8, 1.2, 0.06, (1.0, 0.92, 0.88), "tone"), (24, 1.0, 0.04, (1.0, 0.55, 0.5), "tone"),
            (128, 0.5, 0.6, (-0.6, -0.75, -0.95), "freckles"), (256, 0.7, 0.03, (1.0, 1.0, 1.0), "tone"),
            (1024, 0.8, 0.06, (1.0, 1.0, 1.0), "pores"))


def _skin_texture(f: _Frame, w: _View, i: Identity, lay: _Layout) -> np.ndarray:
    """Multiplicative skin detail over window ``w`` (3 channels), fixed in frontal coordinates."""
    span = 2 * _TEX_SPAN
    dens = span * f.k                                   # pixels across one texture grid
    if w.u.size == 0:
        return np.zeros((*w.u.shape, 3), np.float32)
    mx, my = (w.uf + _TEX_SPAN) / span, (w.v + _TEX_SPAN) / span
    planes = [np.zeros_like(mx) for _ in range(3)]
    for index, (g, sigma, amp, colour, kind) in enumerate(_OCTAVES):
        amp *= i.freckles if kind == "freckles" else 1.0
        if amp == 0 or g > 6 * dens:
            continue
        grid = np.random.default_rng([i.texture_seed, index]).standard_normal((g, g), dtype=np.float32)
        grid = cv2.GaussianBlur(grid, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
        grid /= grid.std()
        if kind == "freckles":   # sparse dots, mostly on the nose and cheeks
            c = (np.arange(g, dtype=np.float32) + 0.5) * (span / g) - _TEX_SPAN
            where = np.exp(-0.5 * ((c[None, :] / 0.55) ** 2 + ((c[:, None] - lay.vn + 0.12) / 0.2) ** 2))
            grid = np.maximum(grid - 2.0, 0) * where
        elif kind == "pores":    # small dark pits
            grid = -np.maximum(grid - 1.0, 0)
        grid -= grid.mean()
        if g > dens:             # area-average to the pixel density (a continuous mip level)
            grid = cv2.resize(grid, (max(2, round(dens)),) * 2, interpolation=cv2.INTER_AREA)
        m = grid.shape[0]
        sample = cv2.remap(grid, mx * m - 0.5, my * m - 0.5, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        for plane, weight in zip(planes, colour):
            cv2.scaleAdd(sample, amp * weight, plane, dst=plane)
    return cv2.merge(planes)


def _tint(kelvin: float) -> np.ndarray:
    """White-balance tint of light at ``kelvin``, normalised to unit luminance."""
    t = [2000, 3500, 4500, 5500, 6500, 7500, 9000, 12000]
    rgb = np.array([np.interp(kelvin, t, [1.0, 1.0, 1.0, 1.0, 1.0, 0.93, 0.86, 0.8]),
                    np.interp(kelvin, t, [0.62, 0.8, 0.88, 0.95, 1.0, 0.97, 0.93, 0.89]),
                    np.interp(kelvin, t, [0.3, 0.58, 0.75, 0.89, 1.0, 1.04, 1.08, 1.1])])
    return (rgb / (rgb @ [0.3, 0.59, 0.11])).astype(np.float32)


def _light(cv: _Canvas, f: _Frame, i: Identity, c: Conditions, lay: _Layout) -> np.ndarray:
    """Skin texture, then wrapped Lambert + ambient + specular with normals of a head ellipsoid (a torso cylinder
    below the chin), warmer shadows, colour-temperature tint; RGB uint8."""
    a, b, depth = i.head_width + 0.2, lay.btop + 0.2, 1.4 * i.head_width
    u, dv = f.u, f.v - lay.vc
    wb = np.clip((f.v - lay.chin + 0.1) / 0.3, 0, 1)
    q = 1 - (u / a) ** 2 - (dv / b) ** 2
    q = 0.5 * (q + np.sqrt(q * q + 0.02))                  # smooth max(q, 0): no crease at the rim
    nx = u * ((1 - wb) / a ** 2 + wb / 2.4)
    ny = dv * ((1 - wb) / b ** 2) - 0.1 * wb
    nz = np.sqrt(q) * ((1 - wb) / depth) + np.sqrt(np.clip(1 - (u / 2.4) ** 2, 0.05, 1)) * wb
    inv = 1 / (np.sqrt(nx * nx + ny * ny + nz * nz) + 1e-6)
    az, el = math.radians(c.light_azimuth), math.radians(c.light_elevation)
    lx, ly, lz = math.sin(az) * math.cos(el), -math.sin(el), math.cos(az) * math.cos(el)
    hn = math.sqrt(lx * lx + ly * ly + (lz + 1) ** 2)     # half vector between the light and the camera
    ndl = (nx * lx + ny * ly + nz * lz) * inv
    ndh = np.maximum((nx * lx + ny * ly + nz * (lz + 1)) * (inv / hn), 0)
    shade = c.ambient + c.light_intensity * np.clip((ndl + 0.3) / 1.3, 0, 1)
    spec = (0.08 * c.light_intensity) * (ndh ** 30) * cv.gloss
    w = f.view(-i.head_width - 0.2, i.head_width + 0.2, lay.vc - lay.btop, 4.0, frontal=False)   # where skin can be
    cv.albedo[w.box] *= 1 + cv.skin[w.box][..., None] * _skin_texture(f, w, i, lay)
    light = shade[..., None] * (1 - (1 - np.minimum(shade, 1))[..., None] * np.float32((0.0, 0.12, 0.25)))
    # albedo = fig * figure + (1 - fig) * background and only the figure is lit: linear in coverage at edges
    out = cv.albedo * light + (1 - cv.fig)[..., None] * cv.background * (1 - light) + spec[..., None]
    return cv2.convertScaleAbs(out * (_tint(c.color_temperature) * 255))


def _check_subjects(identity: Any, conditions: Any) -> None:
    if not isinstance(identity, Identity):
        raise ValueError(f"identity must be an Identity, got {type(identity).__name__}")
    if not isinstance(conditions, Conditions):
        raise ValueError(f"conditions must be a Conditions, got {type(conditions).__name__}")


def render_face(identity: Identity, conditions: Conditions, size: int) -> np.ndarray:
    """Render ``identity`` under ``conditions`` as a ``(size, size, 3)`` uint8 RGB image, 16 <= size <= 1024."""
    _check_subjects(identity, conditions)
    f = _Frame(_check_int("size", size, MIN_SIZE, MAX_SIZE), identity, conditions)
    lay, skin, strands = _Layout.of(identity, conditions), np.float32(identity.skin_tone), _strands(identity)
    cv = _Canvas(f, conditions)
    _draw_back_hair(cv, f, identity, lay, strands)
    _draw_body(cv, f, identity, conditions, lay, skin)
    _draw_ears(cv, f, identity, skin)
    _draw_head(cv, f, identity, lay, skin)
    _draw_relief(cv, f, identity, conditions, lay, skin)
    _draw_eyes(cv, f, identity, conditions, lay, skin)
    _draw_nose(cv, f, identity, conditions, lay, skin)
    _draw_mouth(cv, f, identity, lay, skin)
    _draw_front_hair(cv, f, identity, lay, strands)
    if conditions.eyeglasses:
        _draw_glasses(cv, f, identity, conditions)
    return _light(cv, f, identity, conditions, lay)


def face_landmarks(identity: Identity, conditions: Conditions, size: int) -> dict[str, tuple[float, float]]:
    """The five standard landmarks of ``render_face(identity, conditions, size)`` as pixel (x, y), pixel (0, 0)
    centred at 0: ``left_eye``/``right_eye`` (eye centres, image left/right), ``nose`` (tip), ``mouth_left``,
    ``mouth_right`` (corners)."""
    _check_subjects(identity, conditions)
    f = _Frame(_check_int("size", size, MIN_SIZE, MAX_SIZE), identity, conditions, grid=False)
    lay, es = _Layout.of(identity, conditions), identity.eye_spacing
    points = {"left_eye": (-es, EYE_LINE, 0.0), "right_eye": (es, EYE_LINE, 0.0), "nose": (0.0, lay.vn - 0.05, 0.2),
              "mouth_left": (-lay.mw, lay.vm - lay.lift, 0.1), "mouth_right": (lay.mw, lay.vm - lay.lift, 0.1)}
    return {name: tuple(float(p) for p in f.to_pixels(u, v, depth=depth)) for name, (u, v, depth) in points.items()}


@dataclass(frozen=True, eq=False)
class SyntheticFace:
    """One render: the RGB uint8 image and the parameters that made it."""

    image: np.ndarray
    identity: Identity
    conditions: Conditions
    render_index: int


def identity_seed(seed: int, identity_id: int) -> int:
    """Seed of identity ``identity_id`` in the world of ``seed`` (independent of how many identities are drawn)."""
    return int(np.random.SeedSequence([seed, identity_id]).generate_state(1)[0])


def generate_faces(*, num_identities: int, renders_per_identity: int, size: int, seed: int, first_identity: int = 0,
                   p_smiling: float = 0.5, p_mouth_open: float = 0.3,
                   p_eyeglasses: float = 0.25) -> Iterator[SyntheticFace]:
    """Renders of identities ``first_identity, first_identity + 1, ...`` (ids are these indices), identity by
    identity, each under ``renders_per_identity`` random conditions.

    Identity ``i`` and its ``j``-th conditions depend only on ``(seed, i, j)`` (the same derivation as
    :func:`fsr_core.data.demo_world.synthetic_face_rows`), so shards and subsets agree with a full run.
    """
    for name, value, lo in (("num_identities", num_identities, 1), ("renders_per_identity", renders_per_identity, 1),
                            ("seed", seed, 0), ("first_identity", first_identity, 0)):
        _check_int(name, value, lo)
    _check_int("size", size, MIN_SIZE, MAX_SIZE)
    probs = {"p_smiling": p_smiling, "p_mouth_open": p_mouth_open, "p_eyeglasses": p_eyeglasses}
    for name, p in probs.items():
        _check_range(name, p, 0.0, 1.0)

    def faces() -> Iterator[SyntheticFace]:
        for identity_id in range(first_identity, first_identity + num_identities):
            identity = Identity.from_seed(identity_seed(seed, identity_id), identity_id=identity_id)
            rng = np.random.default_rng([seed, identity_id, 1])
            for j in range(renders_per_identity):
                conditions = sample_conditions(rng, **probs)
                yield SyntheticFace(render_face(identity, conditions, size), identity, conditions, j)

    return faces()
