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

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from fsr_core.data.synthetic_face_drawing import draw_face, landmark_points
from fsr_core.data.synthetic_face_params import (
    EYE_LINE, FACE_UNIT, HAIR_STYLES, MAX_SIZE, MIN_SIZE, Conditions, Identity, _check_int, _check_range, sample_conditions,
)

__all__ = [
    "Identity", "Conditions", "SyntheticFace", "sample_conditions", "render_face", "face_landmarks",
    "generate_faces", "identity_seed", "HAIR_STYLES", "MIN_SIZE", "MAX_SIZE", "FACE_UNIT", "EYE_LINE",
]


def _check_subjects(identity: Any, conditions: Any) -> None:
    if not isinstance(identity, Identity):
        raise ValueError(f"identity must be an Identity, got {type(identity).__name__}")
    if not isinstance(conditions, Conditions):
        raise ValueError(f"conditions must be a Conditions, got {type(conditions).__name__}")


def render_face(identity: Identity, conditions: Conditions, size: int) -> np.ndarray:
    """Render ``identity`` under ``conditions`` as a ``(size, size, 3)`` uint8 RGB image, 16 <= size <= 1024."""
    _check_subjects(identity, conditions)
    return draw_face(identity, conditions, _check_int("size", size, MIN_SIZE, MAX_SIZE))


def face_landmarks(identity: Identity, conditions: Conditions, size: int) -> dict[str, tuple[float, float]]:
    """The five standard landmarks of ``render_face(identity, conditions, size)`` as pixel (x, y), pixel (0, 0)
    centred at 0: ``left_eye``/``right_eye`` (eye centres, image left/right), ``nose`` (tip), ``mouth_left``,
    ``mouth_right`` (corners)."""
    _check_subjects(identity, conditions)
    return landmark_points(identity, conditions, _check_int("size", size, MIN_SIZE, MAX_SIZE))


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
