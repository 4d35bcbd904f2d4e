"""Parameters of the synthetic faces: who (:class:`Identity`) and how (:class:`Conditions`), and their sampling.

See :mod:`fsr_core.data.synthetic_faces` for the model of a face; this module holds the parameter records, their
valid ranges and the random sampling of both.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np


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
