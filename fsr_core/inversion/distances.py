"""Perceptual distances for projection, by name: differentiable ``distance(image, target) -> [N]`` of
``[N,3,s,s]`` images in [-1,1], gradients flowing to ``image``.

``lpips``
    LPIPS (AlexNet v0.1, :mod:`fsr_core.metrics.lpips`): the AlexNet ImageNet backbone from a configured
    location (``lpips_backbone``; it is not obtainable in this build environment, so a missing file is
    an error naming it), the heads from the ``lpips`` wheel or ``lpips_heads``. Images under 32 px are
    refused (AlexNet's pooling needs them).
``dlib``
    ``1 - cos`` of dlib's face descriptors (:mod:`fsr_core.networks.dlib_resnet`, weights of the
    ``face-recognition-models`` package or ``dlib_weights``), on 150 px chips cut from the aligned crops
    by a differentiable warp (the similarity transform :func:`~fsr_core.metrics.face_identity.chips_from_aligned`
    uses, applied with ``grid_sample``).
``face_embedder``
    ``1 - cos`` of the project's own face embedder (:mod:`fsr_core.metrics.face_embedding`), given as the
    restorer's network ``embedder``.
``none``
    no perceptual term (MSE only): :func:`make_distance` returns None.

The loaded backbones are cached per process (a latent-search task runs many batches).
"""

from __future__ import annotations

import functools
from typing import Callable, Literal, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DISTANCES", "EMBEDDINGS", "aligned_chips", "make_distance", "make_embedding"]

DISTANCES = ("lpips", "dlib", "face_embedder", "none")
EMBEDDINGS = ("dlib", "face_embedder")
Name = Literal["lpips", "dlib", "face_embedder", "none"]


@functools.lru_cache(maxsize=4)
def _lpips(backbone: str, heads: str | None) -> nn.Module:
    from fsr_core.metrics.lpips import load_lpips

    return load_lpips(backbone, heads).requires_grad_(False)


@functools.lru_cache(maxsize=4)
def _dlib(weights: str | None) -> nn.Module:
    from fsr_core.networks.dlib_resnet import load_dlib_face_descriptor

    return load_dlib_face_descriptor(weights).requires_grad_(False)


@functools.lru_cache(maxsize=16)
def _chip_grid(side: int, template: str, chip: int) -> np.ndarray:
    """``grid_sample`` grid ``[chip,chip,2]`` taking an aligned ``side`` px crop to dlib's chip."""
    from fsr_core.data.detection import TEMPLATES, similarity_transform
    from fsr_core.metrics.face_identity import chip_landmarks

    source = TEMPLATES[template] * side - 0.5
    matrix = np.vstack([similarity_transform(source, chip_landmarks(chip)), [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(matrix)  # chip pixel -> crop pixel
    ys, xs = np.mgrid[0:chip, 0:chip].astype(np.float64)
    points = inverse @ np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    grid = (2.0 * points[:2] + 1.0) / side - 1.0  # pixel centres -> [-1, 1] (align_corners=False)
    return grid.T.reshape(chip, chip, 2).astype(np.float32)


def aligned_chips(images: Tensor, *, template: str = "ffhq", chip: int = 150) -> Tensor:
    """dlib chips ``[N,3,chip,chip]`` (same range as ``images``) of aligned crops ``[N,3,S,S]``:
    the warp of :func:`~fsr_core.metrics.face_identity.chips_from_aligned`, bilinear and differentiable."""
    grid = torch.from_numpy(_chip_grid(images.shape[-1], template, chip)).to(images)
    return F.grid_sample(images, grid.expand(images.shape[0], -1, -1, -1), mode="bilinear",
                         padding_mode="border", align_corners=False)


def make_embedding(name: Literal["dlib", "face_embedder"], *, networks: Mapping[str, nn.Module] | None = None,
                   dlib_weights: str | None = None, template: str = "ffhq",
                   device: torch.device | str = "cpu") -> Callable[[Tensor], Tensor]:
    """A differentiable identity embedding ``[N,3,S,S]`` in [-1,1] -> unit ``[N,E]``: dlib's descriptor of
    the aligned crops' chips, or the restorer network ``embedder`` (the identity distances' ``T``)."""
    if name == "dlib":
        descriptor = _dlib(dlib_weights).to(device)

        def dlib(images: Tensor) -> Tensor:
            return F.normalize(descriptor((aligned_chips(images, template=template) + 1.0) * 127.5), dim=1)

        return dlib
    if name == "face_embedder":
        if not networks or "embedder" not in networks:
            raise ValueError("identity 'face_embedder' needs the restorer network 'embedder' "
                             "(a face_embedder_train checkpoint's embedder)")
        embedder = networks["embedder"]

        def face_embedder(images: Tensor) -> Tensor:
            return F.normalize(embedder(images), dim=1)

        return face_embedder
    raise ValueError(f"unknown identity embedding {name!r}; known: {list(EMBEDDINGS)}")


def make_distance(name: Name, *, networks: Mapping[str, nn.Module] | None = None, lpips_backbone: str | None = None,
                  lpips_heads: str | None = None, dlib_weights: str | None = None, template: str = "ffhq",
                  device: torch.device | str = "cpu") -> Callable[[Tensor, Tensor], Tensor] | None:
    """The distance called ``name`` (see the module docstring), its networks on ``device``."""
    if name == "none":
        return None
    if name == "lpips":
        if not lpips_backbone:
            raise FileNotFoundError("perceptual 'lpips' needs lpips_backbone: the path of AlexNet's ImageNet weights "
                                    "(torchvision's alexnet-owt-7be5be79.pth); they are not downloaded")
        model = _lpips(lpips_backbone, lpips_heads).to(device)

        def lpips(image: Tensor, target: Tensor) -> Tensor:
            if image.shape[-1] < 32:
                raise ValueError(f"LPIPS needs images of 32 px or more, got {image.shape[-1]} px")
            return model(image, target)

        return lpips
    if name in ("dlib", "face_embedder"):  # 1 - cosine of the identity embedding (make_embedding)
        embed = make_embedding(name, networks=networks, dlib_weights=dlib_weights, template=template, device=device)

        def identity_distance(image: Tensor, target: Tensor) -> Tensor:
            return 1.0 - (embed(image) * embed(target)).sum(dim=1)

        return identity_distance
    raise ValueError(f"unknown perceptual distance {name!r}; known: {list(DISTANCES)}")
