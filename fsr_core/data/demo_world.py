"""Shard rows of the embedded demo world: synthetic faces (HR, labelled) and real LR faces (LFW).

- :func:`synthetic_face_rows`: renders of the parametric faces of
  :mod:`fsr_core.data.synthetic_faces`, split by identity (no identity is in two splits);
- :func:`lfw_face_rows`: the 100 face images of scikit-image's ``lfw_subset()``
  (25x25 grey, genuine low resolution), the demo's real-LR set.

Both are deterministic and need no download.
"""

from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import numpy as np

from fsr_core.data.codec import encode_png
from fsr_core.data.schema import make_face_id
from fsr_core.data.splits import assign_split

__all__ = ["synthetic_face_rows", "lfw_face_rows", "LFW_NUM_FACES"]

LFW_NUM_FACES = 100  # lfw_subset(): the first 100 of its 200 images are faces


def synthetic_face_rows(
    identity_ids: Sequence[int],
    *,
    renders_per_identity: int,
    size: int,
    seed: int,
    split_fractions: Mapping[str, float],
) -> Iterator[dict]:
    """Rows for the given identities, ``renders_per_identity`` renders each (pose, expression, light vary)."""
    from fsr_core.data.synthetic_faces import Identity, render_face, sample_conditions

    for identity_id in identity_ids:
        identity = Identity.from_seed(_identity_seed(seed, identity_id), identity_id=identity_id)
        split = assign_split(f"synthetic/{seed}/{identity_id}", split_fractions, salt="identity")
        rng = np.random.default_rng([seed, identity_id, 1])
        for render_index in range(renders_per_identity):
            conditions = sample_conditions(rng)
            image = render_face(identity, conditions, size)
            source_uri = f"synthetic://seed={seed}/identity={identity_id}/render={render_index}"
            yield {
                "id": make_face_id("synthetic", source_uri, extra=f"size={size}"),
                "image_png": encode_png(image),
                "height": size,
                "width": size,
                "source": "synthetic",
                "source_uri": source_uri,
                "bbox": [0.0, 0.0, float(size), float(size)],
                "identity": f"synthetic-{seed}-{identity_id}",
                "attributes": {k: int(v) for k, v in conditions.attributes().items()},
                "quality": {},
                "meta": {"identity": identity.to_dict(), "conditions": conditions.to_dict(), "seed": seed},
                "split": split,
            }


def _identity_seed(seed: int, identity_id: int) -> int:
    return int(np.random.SeedSequence([seed, identity_id]).generate_state(1)[0])


def lfw_face_rows(*, count: int = LFW_NUM_FACES, split_fractions: Mapping[str, float], seed: int = 0) -> Iterator[dict]:
    """The genuine low-resolution faces of ``skimage.data.lfw_subset()`` (grey, stored as RGB)."""
    if not 1 <= count <= LFW_NUM_FACES:
        raise ValueError(f"count must be in [1, {LFW_NUM_FACES}] (only the first {LFW_NUM_FACES} images are faces), got {count}")
    from skimage.data import lfw_subset

    images = lfw_subset()[:count]
    for index, grey in enumerate(images):
        pixels = np.clip(np.rint(grey * 255.0), 0, 255).astype(np.uint8)
        rgb = np.repeat(pixels[:, :, None], 3, axis=2)
        source_uri = f"skimage://lfw_subset/{index}"
        height, width = pixels.shape
        yield {
            "id": make_face_id("lfw_subset", source_uri),
            "image_png": encode_png(rgb),
            "height": height,
            "width": width,
            "source": "lfw_subset",
            "source_uri": source_uri,
            "bbox": [0.0, 0.0, float(width), float(height)],
            "identity": None,
            "attributes": {},
            "quality": {},
            "meta": {"grey": True, "origin": "Labeled Faces in the Wild, via scikit-image lfw_subset()"},
            "split": assign_split(f"lfw/{index}", split_fractions, salt=f"lfw-{seed}"),
        }
