"""Embeddings of aligned faces with the project's own face embedder, and their cosine similarity.

The embedder (:class:`~fsr_core.networks.face_embedder.FaceEmbedder`, trained by
:mod:`fsr_core.training.face_embedder_objective`; load one with
:func:`~fsr_core.training.face_embedder_objective.load_face_embedder`) maps aligned crops to
embeddings that are compared by cosine similarity, like dlib's descriptor
(:mod:`fsr_core.metrics.face_identity`). The metrics themselves are
:mod:`fsr_core.metrics.identity`'s (cosine similarity, Rank-1) on these embeddings.

- :func:`embed`: ``[N,3,S,S]`` in [-1,1] -> unit embeddings ``[N,D]``, a differentiable torch
  function (what a training loss with a frozen embedder calls: CR's face features, SAIR's identity term);
- :func:`face_embeddings`: uint8 crops ``[N,S,S,3]`` -> unit embeddings ``[N,D]`` float64, in
  batches without gradients (what a metric calls);
- :func:`embedding_similarity`: the cosine similarity of the embeddings of ``a[i]`` and ``b[i]``;
- :func:`load_metric_embedder`: the embedder of a ``face_embedder_train`` checkpoint (a local folder
  or an ``s3://`` prefix), in eval mode, for the metric ``identity_sim_face_embedder`` (the
  network in the name, as ``identity_sim_dlib``); :func:`embedder_weights_uri` names its weight
  file, whose sha256 is recorded on the run that uses it.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

from fsr_core import storage
from fsr_core.metrics.identity import cosine_similarity

__all__ = ["EMBEDDER_NETWORK", "embed", "embedder_weights_uri", "embedding_similarity", "face_embeddings",
           "load_metric_embedder"]

#: the name of the embedder network in a face_embedder_train checkpoint
EMBEDDER_NETWORK = "embedder"


def embed(network: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Unit-length embeddings ``[N,D]`` of aligned crops ``[N,3,S,S]`` in [-1,1] (gradients flow
    to ``images`` and to the network's trainable parameters)."""
    return F.normalize(network(images), dim=1)


def face_embeddings(network: torch.nn.Module, crops: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """Unit-length float64 embeddings ``[N,D]`` of uint8 aligned crops ``[N,S,S,3]`` (no gradients).

    The network must be in eval mode (its BatchNorm layers then use their running statistics, so a
    face's embedding does not depend on the rest of its batch)."""
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8:
        raise ValueError(f"expected uint8 crops [N,S,S,3], got {crops.dtype} {crops.shape}")
    if network.training:
        raise ValueError("face_embeddings needs the embedder in eval mode (call network.eval())")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    first = next(network.parameters())
    out = []
    with torch.no_grad():
        for start in range(0, len(crops), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(crops[start:start + batch_size])).permute(0, 3, 1, 2)
            x = x.to(device=first.device, dtype=first.dtype).div(127.5).sub(1.0)
            out.append(embed(network, x).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, int(getattr(network, "embedding_dim", 0))))


def embedding_similarity(network: torch.nn.Module, a: np.ndarray, b: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """``[N]`` cosine similarity of the embeddings of uint8 aligned crops ``a[i]`` and ``b[i]``
    (the two sets may have different crop sizes: the embedder resizes to its own)."""
    if len(a) != len(b):
        raise ValueError(f"a and b must hold the same number of crops, got {len(a)} and {len(b)}")
    return cosine_similarity(face_embeddings(network, a, batch_size=batch_size),
                             face_embeddings(network, b, batch_size=batch_size))


def embedder_weights_uri(checkpoint: str) -> str:
    """The embedder's weight file in a checkpoint folder or prefix (what its sha256 is taken of)."""
    from fsr_core.training import checkpoint as ckpt

    return storage.join(checkpoint, "weights", f"{EMBEDDER_NETWORK}.pt") if storage.is_s3(checkpoint) else \
        ckpt.weights_path(checkpoint, EMBEDDER_NETWORK)


def load_metric_embedder(checkpoint: str, *, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The face embedder of a ``face_embedder_train`` checkpoint (local folder or ``s3://`` prefix;
    only ``networks.json`` and the embedder's weights are read), in eval mode on ``device``."""
    from fsr_core.training import checkpoint as ckpt
    from fsr_core.training.face_embedder_objective import load_face_embedder

    if not storage.is_s3(checkpoint):
        if not os.path.isdir(checkpoint):
            raise FileNotFoundError(f"face embedder checkpoint not found: {checkpoint}")
        return load_face_embedder(checkpoint, network=EMBEDDER_NETWORK, device=device)
    with tempfile.TemporaryDirectory(prefix="fsr-embedder-") as local:
        storage.download_file(storage.join(checkpoint, ckpt.NETWORKS_FILE), os.path.join(local, ckpt.NETWORKS_FILE))
        storage.download_file(embedder_weights_uri(checkpoint), ckpt.weights_path(local, EMBEDDER_NETWORK))
        return load_face_embedder(local, network=EMBEDDER_NETWORK, device=device)
