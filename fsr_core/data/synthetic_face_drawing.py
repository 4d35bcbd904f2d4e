"""Drawing of the synthetic faces: analytic, box-filtered coverage on the pixel grid, layers, texture and light.

The model is described in :mod:`fsr_core.data.synthetic_faces`; callers use its ``render_face``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from fsr_core.data.synthetic_face_params import (
    EYE_LINE, FACE_UNIT, Conditions, Identity,
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


def draw_face(identity: Identity, conditions: Conditions, size: int) -> np.ndarray:
    """Draw a checked ``size``; see :func:`fsr_core.data.synthetic_faces.render_face`."""
    f = _Frame(size, identity, conditions)
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


def landmark_points(identity: Identity, conditions: Conditions, size: int) -> dict[str, tuple[float, float]]:
    """The five standard landmarks of ``render_face(identity, conditions, size)`` as pixel (x, y), pixel (0, 0)
    centred at 0: ``left_eye``/``right_eye`` (eye centres, image left/right), ``nose`` (tip), ``mouth_left``,
    ``mouth_right`` (corners)."""
    f = _Frame(size, identity, conditions, grid=False)
    lay, es = _Layout.of(identity, conditions), identity.eye_spacing
    points = {"left_eye": (-es, EYE_LINE, 0.0), "right_eye": (es, EYE_LINE, 0.0), "nose": (0.0, lay.vn - 0.05, 0.2),
              "mouth_left": (-lay.mw, lay.vm - lay.lift, 0.1), "mouth_right": (lay.mw, lay.vm - lay.lift, 0.1)}
    return {name: tuple(float(p) for p in f.to_pixels(u, v, depth=depth)) for name, (u, v, depth) in points.items()}
