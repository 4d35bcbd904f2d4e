"""What SAIR's latent search knows besides the generator, as networks of buffers (no trainable weight),
so that a restorer bundle carries them (``weights/references.pt``, ``weights/expressions.pt``) and
``fsr restore --references URI`` can swap the pool.

:class:`ReferencePool`
    the reference faces ``Z``: per reference its identity's name, its identity embedding ``T(Z)``
    (unit) and ``w_z``, its inversion into W+. ``forward(embeddings)`` gives the cosine similarities
    that pick a face's reference (:meth:`ReferencePool.select`: by ``T`` alone, or among the references
    of a given identity).
:class:`ExpressionDirections`
    per attribute (expression) ``e``: the unit direction ``dw_e`` in W+ (the normal of a linear
    classifier on latent codes labelled by an attribute source) and a linear classifier on LR pixels that
    infers the attribute of an input face (the paper's expression detector on the LQ image).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fsr_core.networks.base import Network

__all__ = ["ExpressionDirections", "ReferencePool"]

Choice = Literal["nearest", "wrong_identity"]


class ReferencePool(Network):
    """Buffers ``codes`` ``[R,L,D]`` (W+ inversions ``w_z``), ``embeddings`` ``[R,E]`` (unit ``T(Z)``);
    ``identities`` (the R references' identity names) and ``identity`` (the embedding's name,
    :func:`~fsr_core.inversion.distances.make_embedding`) are arguments.

    ``forward(embeddings)``: ``[N,E]`` unit embeddings of faces -> ``[N,R]`` cosine similarities."""

    def __init__(self, *, identities: list[str], layers: int, style_dim: int, embedding_dim: int,
                 identity: Literal["dlib", "face_embedder"] = "dlib") -> None:
        super().__init__()
        if not identities:
            raise ValueError("a reference pool needs one or more references")
        if min(layers, style_dim, embedding_dim) < 1:
            raise ValueError(f"layers, style_dim and embedding_dim must be >= 1, got {layers}, {style_dim}, "
                             f"{embedding_dim}")
        self.identities, self.identity = list(identities), identity
        self.layers, self.style_dim, self.embedding_dim = layers, style_dim, embedding_dim
        self.register_buffer("codes", torch.zeros(len(identities), layers, style_dim))
        self.register_buffer("embeddings", torch.zeros(len(identities), embedding_dim))

    @torch.no_grad()
    def set(self, *, codes: Tensor, embeddings: Tensor) -> "ReferencePool":
        codes, embeddings = torch.as_tensor(codes, dtype=torch.float32), torch.as_tensor(embeddings,
                                                                                         dtype=torch.float32)
        if tuple(codes.shape) != tuple(self.codes.shape) or tuple(embeddings.shape) != tuple(self.embeddings.shape):
            raise ValueError(f"codes must be {tuple(self.codes.shape)} and embeddings {tuple(self.embeddings.shape)}, "
                             f"got {tuple(codes.shape)}, {tuple(embeddings.shape)}")
        self.codes.copy_(codes)
        self.embeddings.copy_(F.normalize(embeddings, dim=1))
        return self

    def forward(self, embeddings: Tensor) -> Tensor:
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_dim:
            raise ValueError(f"ReferencePool expects embeddings [N,{self.embedding_dim}], got {tuple(embeddings.shape)}")
        return F.normalize(embeddings, dim=1) @ self.embeddings.T

    def select(self, embeddings: Tensor, *, choice: Choice = "nearest",
               identities: Sequence[str] | None = None) -> Tensor:
        """``[N]`` reference indices, by the similarity of ``embeddings`` to the references'. Each face's
        identity is ``identities[i]`` when given (the user's word: the paper hands SAIR a reference of the
        same person), else the identity of its most similar reference. ``nearest``: the most similar
        reference *of* that identity; ``wrong_identity``: the most similar reference of *another* identity
        (what a recognition mistake, or a wrong reference handed over, gives the search; the README's
        wrong-reference study). With ``nearest``, a given identity the pool does not hold is a ``ValueError``
        naming it (with ``wrong_identity`` every reference is then of another identity); an empty or ``None``
        identity is a ``ValueError``."""
        if choice not in ("nearest", "wrong_identity"):
            raise ValueError(f"choice must be 'nearest' or 'wrong_identity', got {choice!r}")
        similarity = self(embeddings)
        names = self.identities
        if identities is None:
            if choice == "nearest":
                return similarity.argmax(dim=1)
            anchors = [names[int(i)] for i in similarity.argmax(dim=1)]
        else:
            if any(name is None or not str(name) for name in identities):
                raise ValueError("a given identity is empty or None; every face needs its identity")
            anchors = [str(name) for name in identities]
            if len(anchors) != similarity.shape[0]:
                raise ValueError(f"{len(anchors)} identities for {similarity.shape[0]} faces")
            missing = sorted(set(anchors) - set(names))
            if missing and choice == "nearest":
                raise ValueError(f"the reference pool holds no reference of identity(ies) {missing[:5]} "
                                 f"({len(missing)} missing; the pool holds {len(set(names))} identities)")
        if choice == "wrong_identity" and len(set(names)) < 2:
            raise ValueError("a wrong-identity reference needs a pool of two or more identities")
        same = torch.tensor([[names[r] == anchor for r in range(len(names))] for anchor in anchors],
                            dtype=torch.bool, device=similarity.device).view(len(anchors), len(names))
        keep = same if choice == "nearest" else ~same
        return similarity.masked_fill(~keep, -float("inf")).argmax(dim=1)


class ExpressionDirections(Network):
    """Per attribute ``e`` of ``attributes``: ``directions[e]`` ``[L,D]`` (unit over ``L x D``; the latent
    classifier's normal, toward the attribute being present), and the LR classifier ``lr_weight[e]``
    ``[3*s*s]``, ``lr_bias[e]`` on ``[N,3,s,s]`` faces in [-1,1] resized to ``lr_size``.

    ``forward(lr)``: ``[N,3,h,w]`` -> ``[N,K]`` logits (> 0: the attribute is present)."""

    def __init__(self, *, attributes: list[str], layers: int, style_dim: int, lr_size: int) -> None:
        super().__init__()
        if not attributes:
            raise ValueError("ExpressionDirections needs one or more attributes")
        if min(layers, style_dim, lr_size) < 1:
            raise ValueError(f"layers, style_dim and lr_size must be >= 1, got {layers}, {style_dim}, {lr_size}")
        self.attributes, self.layers, self.style_dim, self.lr_size = list(attributes), layers, style_dim, lr_size
        k = len(attributes)
        self.register_buffer("directions", torch.zeros(k, layers, style_dim))
        self.register_buffer("lr_weight", torch.zeros(k, 3 * lr_size * lr_size))
        self.register_buffer("lr_bias", torch.zeros(k))

    @torch.no_grad()
    def set(self, *, directions: Tensor, lr_weight: Tensor, lr_bias: Tensor) -> "ExpressionDirections":
        directions = torch.as_tensor(directions, dtype=torch.float32).reshape(self.directions.shape)
        flat = directions.flatten(1)
        self.directions.copy_((flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).view_as(directions))
        self.lr_weight.copy_(torch.as_tensor(lr_weight, dtype=torch.float32).reshape(self.lr_weight.shape))
        self.lr_bias.copy_(torch.as_tensor(lr_bias, dtype=torch.float32).reshape(self.lr_bias.shape))
        return self

    def forward(self, lr: Tensor) -> Tensor:
        if lr.ndim != 4 or lr.shape[1] != 3:
            raise ValueError(f"ExpressionDirections expects [N,3,h,w] in [-1,1], got {tuple(lr.shape)}")
        if lr.shape[-1] != self.lr_size or lr.shape[-2] != self.lr_size:
            from fsr_core.degradation.resize import imresize_torch

            lr = imresize_torch(lr, output_size=(self.lr_size, self.lr_size))
        return lr.flatten(1) @ self.lr_weight.T + self.lr_bias
