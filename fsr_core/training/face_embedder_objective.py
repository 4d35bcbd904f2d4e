"""The objective of the project's own face embedder: softmax + centre loss on identity labels
(CentreFace, Wen et al. 2016), for identity metrics, CR's face-feature network and SAIR's identity term.

One data set, ``faces``: aligned crops with their ``identity`` column. The training stage hands the
objective the sorted identities of the rows it reads (``data_info["faces"]["identities"]``); a
batch's ``identity`` is the index into that list, which is this objective's class index (so the
label map is the sorted list, stored in ``train_state.json``'s ``data_info`` and, with the centres,
in the objective's own state). A row without an identity arrives as -1 and is skipped: it enters
neither loss; a batch with no labelled row is a ``ValueError``.

One step (Algorithm 1 of the paper), on the labelled rows ``x``, labels ``y``:

- ``e = embedder(x)`` (:class:`~fsr_core.networks.face_embedder.FaceEmbedder`),
  ``logits = head(e)`` (:class:`~fsr_core.networks.face_embedder.IdentityClassifier`);
- ``L = CE(logits, y) + centre_weight * L_C(e, y, centres)`` (``centre_weight`` is the paper's
  lambda, :func:`~fsr_core.losses.centre.centre_loss`); one backward pass, both networks step
  (SGD with momentum and weight decay; the rate divided by ``lr_decay`` at each of
  ``lr_milestones``, computed from the step so a resumed run continues the schedule);
- the centres move with their own rate ``centre_rate`` (the paper's alpha,
  :func:`~fsr_core.losses.centre.update_centres`) towards the batch's features of the step (before
  the update); with several workers the per-class sums and counts are added over all of them
  first, so every worker keeps the same centres. They start at zero.

Defaults are the paper's face-recognition setting: lambda 0.003, alpha 0.5, SGD rate 0.1 divided by
10 at 16k and 24k steps, momentum 0.9, weight decay 5e-4.

The checkpoint holds ``embedder`` and ``head``; the objective exports no restorer (an embedder
restores nothing): consumers load the embedder by network name with :func:`load_face_embedder`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fsr_core.losses.centre import centre_differences, centre_loss, update_centres
from fsr_core.networks.face_embedder import FaceEmbedder, IdentityClassifier
from fsr_core.training.objective import DataSpec, Objective

__all__ = ["DATA", "FaceEmbedderObjective", "load_face_embedder"]

DATA = "faces"
"""The objective's one data set."""


class FaceEmbedderObjective(Objective):
    """Embedder, softmax head, centres; softmax + ``centre_weight`` x centre loss.

    Args:
        embedder: constructor keyword arguments of :class:`FaceEmbedder` (its ``input_size`` is the
            size crops are resized to).
        centre_weight: lambda, the weight of the centre loss (paper: 0.003).
        centre_rate: alpha, the centres' update rate in [0, 1] (paper: 0.5).
        lr: SGD learning rate at step 0 (paper: 0.1).
        momentum, weight_decay: SGD's (paper: 0.9, 5e-4).
        lr_milestones: steps after which the rate is multiplied by ``lr_decay`` (paper: 16k, 24k; 0.1).
        device: where the networks live; batches are moved there.
        data_info: the training stage's; ``data_info["faces"]["identities"]`` (at least two) are the classes.

    Batches: ``batch["faces"]["image"]`` ``[N,3,S,S]`` in [-1,1] and ``batch["faces"]["identity"]``
    int64 ``[N]`` (class index, -1 for a row without identity).
    """

    progress_loss = "total"

    def __init__(
        self,
        *,
        embedder: Mapping[str, Any],
        centre_weight: float = 0.003,
        centre_rate: float = 0.5,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        lr_milestones: Sequence[int] = (16_000, 24_000),
        lr_decay: float = 0.1,
        device: str | torch.device = "cpu",
        data_info: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(device=device, data_info=data_info)
        if centre_weight < 0:
            raise ValueError(f"centre_weight must be >= 0, got {centre_weight}")
        if not 0.0 <= centre_rate <= 1.0:
            raise ValueError(f"centre_rate must be in [0, 1], got {centre_rate}")
        if lr <= 0 or not 0.0 <= momentum < 1.0 or weight_decay < 0 or not 0.0 < lr_decay <= 1.0:
            raise ValueError(f"need lr > 0, momentum in [0, 1), weight_decay >= 0, lr_decay in (0, 1]; got {lr}, "
                             f"{momentum}, {weight_decay}, {lr_decay}")
        milestones = [int(m) for m in lr_milestones]
        if milestones != sorted(set(milestones)) or any(m < 1 for m in milestones):
            raise ValueError(f"lr_milestones must be increasing positive steps, got {list(lr_milestones)}")
        identities = (self.data_info.get(DATA) or {}).get("identities")
        if not identities or len(identities) < 2:
            raise ValueError(f"the face embedder learns from identity labels: data_info[{DATA!r}]['identities'] must "
                             f"list at least two identities, got {identities!r} (do the rows have an identity?)")
        self.identities = [str(name) for name in identities]
        self.centre_weight, self.centre_rate = float(centre_weight), float(centre_rate)
        self.lr, self.lr_decay, self.lr_milestones = float(lr), float(lr_decay), milestones
        embedder_net = FaceEmbedder(**dict(embedder))
        self.networks = {
            "embedder": embedder_net.to(self.device),
            "head": IdentityClassifier(embedding_dim=embedder_net.embedding_dim,
                                       num_classes=len(self.identities)).to(self.device),
        }
        self.set_trained(("embedder", "head"))
        self.optimizers = {
            name: torch.optim.SGD(self.networks[name].parameters(), lr=self.lr, momentum=momentum,
                                  weight_decay=weight_decay)
            for name in self.trained
        }
        self.centres = torch.zeros(len(self.identities), embedder_net.embedding_dim, device=self.device)

    # ------------------------------------------------------------------ the contract
    @classmethod
    def datasets(cls, config: Mapping[str, Any]) -> dict[str, DataSpec]:
        size = int(dict(config.get("embedder") or {}).get("input_size", 64))
        return {DATA: DataSpec(size=size, columns=("image", "identity"))}

    def state_dict(self) -> dict[str, Any]:
        return {"centres": self.centres.detach().cpu(), "identities": list(self.identities)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if list(state.get("identities", [])) != self.identities:
            raise ValueError(
                f"the checkpoint's identities ({len(state.get('identities', []))}, from "
                f"{list(state.get('identities', []))[:3]}) are not this data's ({len(self.identities)}, from "
                f"{self.identities[:3]}): its classes and centres would mean other people")
        centres = state["centres"]
        if tuple(centres.shape) != tuple(self.centres.shape):
            raise ValueError(f"the checkpoint's centres are {tuple(centres.shape)}, expected {tuple(self.centres.shape)}")
        self.centres = centres.to(self.device, self.centres.dtype).clone()

    def learning_rate(self, step: int) -> float:
        """The SGD rate of step ``step`` (0-based): ``lr * lr_decay ** #(milestones <= step)``."""
        return self.lr * self.lr_decay ** sum(step >= m for m in self.lr_milestones)

    # ------------------------------------------------------------------ steps
    def _labelled(self, batch: Mapping[str, Mapping[str, Tensor]]) -> tuple[Tensor, Tensor, int]:
        """The batch's labelled images and labels on the device, and its row count."""
        rows = batch.get(DATA) or {}
        if "image" not in rows or "identity" not in rows:
            raise ValueError(f"the face embedder needs batch[{DATA!r}]['image'] and ['identity']; got data "
                             f"sets {sorted(batch)} with columns {sorted(rows)}")
        images, labels = rows["image"], rows["identity"]
        ok = isinstance(images, Tensor) and images.is_floating_point() and images.ndim == 4 and images.shape[1] == 3
        if not ok or not isinstance(labels, Tensor) or labels.shape != images.shape[:1]:
            raise ValueError(f"expected images [N,3,S,S] in [-1,1] and identity [N], got "
                             f"{tuple(getattr(images, 'shape', ()))} and {tuple(getattr(labels, 'shape', ()))}")
        labels = labels.to(self.device, torch.int64)
        if labels.numel() and int(labels.max()) >= len(self.identities):
            raise ValueError(f"identity index {int(labels.max())} outside the {len(self.identities)} classes")
        known = labels >= 0
        if not bool(known.any()):
            raise ValueError(f"a batch of {len(labels)} rows has no row with an identity: the face embedder "
                             f"trains on labelled faces only (filter the data set, or pick a split that has them)")
        return images.to(self.device)[known], labels[known], len(labels)

    def train_step(self, batch: Mapping[str, Mapping[str, Tensor]], *, step: int = 0) -> dict[str, float]:
        """One SGD step of both networks and one centre update; returns the losses before the step,
        the batch's training accuracy and the fraction of its rows that had an identity."""
        images, labels, rows = self._labelled(batch)
        rate = self.learning_rate(step)
        for optimizer in self.optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = rate
        embedding = self.module("embedder")(images)
        logits = self.module("head")(embedding)
        softmax = F.cross_entropy(logits, labels)
        centre = centre_loss(embedding, labels, self.centres)
        total = softmax + self.centre_weight * centre
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        total.backward()
        for optimizer in self.optimizers.values():
            optimizer.step()
        self._update_centres(embedding.detach(), labels)
        out = {
            "total": float(total.detach()),
            "softmax": float(softmax.detach()),
            "centre": float(centre.detach()),
            "accuracy": float((logits.detach().argmax(dim=1) == labels).float().mean()),
            "labelled": len(labels) / rows,
            "lr": rate,
        }
        if not all(math.isfinite(v) for v in out.values()):
            raise FloatingPointError(f"non-finite loss in step: {out}")
        return out

    def _update_centres(self, embedding: Tensor, labels: Tensor) -> None:
        import torch.distributed as dist

        sums, counts = centre_differences(embedding, labels, self.centres)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(sums)  # the global batch's sums and counts: the same centres on every worker
            dist.all_reduce(counts)
        self.centres = update_centres(self.centres, sums, counts, alpha=self.centre_rate)

    @torch.no_grad()
    def sample(self, batch: Mapping[str, Mapping[str, Tensor]], *, seed: int = 0) -> dict[str, Tensor]:
        """``faces`` (the batch's images) and ``nearest`` (for each, the other face of the batch whose
        embedding is most similar by cosine, from the embedder in eval mode)."""
        images = batch[DATA]["image"].to(self.device)
        embedder = self.networks["embedder"]
        embedder.eval()
        try:
            unit = F.normalize(embedder(images), dim=1)
        finally:
            embedder.train("embedder" in self.trained)
        similarity = unit @ unit.T
        similarity.fill_diagonal_(-math.inf)
        nearest = similarity.argmax(dim=1) if len(images) > 1 else torch.zeros(1, dtype=torch.long, device=self.device)
        return {"faces": images, "nearest": images[nearest]}


def load_face_embedder(checkpoint_dir: str, *, network: str = "embedder", ema: bool = False,
                       device: str | torch.device = "cpu") -> FaceEmbedder:
    """The :class:`FaceEmbedder` saved as ``network`` in a (local) checkpoint folder, in eval mode
    on ``device``; ``ValueError`` when that network is not a face embedder."""
    from fsr_core.training import checkpoint as ckpt

    loaded = ckpt.load_networks(checkpoint_dir, names=[network], ema=ema)[network]
    if not isinstance(loaded, FaceEmbedder):
        raise ValueError(f"network {network!r} of {checkpoint_dir} is a {type(loaded).__name__}, not a FaceEmbedder")
    return loaded.eval().to(device)
