"""The face-embedder objective: softmax + centre loss, the centre update, unlabelled rows, the
learning-rate schedule, checkpoints, and learning identities of the demo world (tiny, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fsr_core.data.codec import decode_png
from fsr_core.data.demo_world import synthetic_face_rows
from fsr_core.losses.centre import centre_differences, update_centres
from fsr_core.metrics.face_embedding import face_embeddings
from fsr_core.metrics.identity import rank1_accuracy
from fsr_core.networks.face_embedder import FaceEmbedder
from fsr_core.training.face_embedder_objective import FaceEmbedderObjective, load_face_embedder
from fsr_core.training.objective import DataSpec

TINY = {"input_size": 32, "embedding_dim": 16, "channels": [8, 16, 32], "blocks_per_stage": 1}
NAMES = ["a", "b", "c"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks: one thread is faster than two contending ones (and the numbers repeat)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(seed: int = 0, names=NAMES, **kwargs) -> FaceEmbedderObjective:
    torch.manual_seed(seed)
    return FaceEmbedderObjective(**{"embedder": TINY, "lr": 0.03, **kwargs},
                                 data_info={"faces": {"identities": list(names), "num_identities": len(names)}})


def batch(seed: int, labels) -> dict:
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(len(labels), 3, 32, 32, generator=gen) * 2 - 1
    return {"faces": {"image": images, "identity": torch.tensor(labels, dtype=torch.int64)}}


def test_reads_images_with_identities_at_the_embedder_size():
    assert FaceEmbedderObjective.datasets({"embedder": TINY}) == {
        "faces": DataSpec(size=32, columns=("image", "identity"))}
    assert FaceEmbedderObjective.datasets({"embedder": {}})["faces"].size == 64
    objective = make()
    assert set(objective.networks) == {"embedder", "head"} and objective.trained == ("embedder", "head")
    assert objective.networks["head"].num_classes == 3
    assert objective.exports() == {}  # an embedder restores nothing
    assert (objective.config["centre_weight"], objective.config["centre_rate"]) == (0.003, 0.5)  # the paper's


def test_needs_at_least_two_identities():
    with pytest.raises(ValueError, match="identities"):
        FaceEmbedderObjective(embedder=TINY)
    with pytest.raises(ValueError, match="at least two"):
        FaceEmbedderObjective(embedder=TINY, data_info={"faces": {"identities": ["only"]}})
    with pytest.raises(ValueError, match="centre_rate"):
        make(centre_rate=1.5)
    with pytest.raises(ValueError, match="lr_milestones"):
        make(lr_milestones=[10, 5])


def test_one_step_is_softmax_plus_lambda_centre_loss_and_moves_the_centres():
    objective = make(centre_weight=0.5, centre_rate=0.25)
    data = batch(0, [0, 1, 0, 0])
    with torch.no_grad():  # train-mode BatchNorm: the step's own forward pass gives the same embeddings
        embedding = objective.networks["embedder"](data["faces"]["image"])
        logits = objective.networks["head"](embedding)
    losses = objective.train_step(data, step=0)
    labels = data["faces"]["identity"]
    softmax = float(F.cross_entropy(logits, labels))
    centre = float(0.5 * embedding.pow(2).sum(1).mean())  # the centres start at zero
    assert losses["softmax"] == pytest.approx(softmax, rel=1e-5)
    assert losses["centre"] == pytest.approx(centre, rel=1e-5)
    assert losses["total"] == pytest.approx(softmax + 0.5 * centre, rel=1e-5)
    assert (losses["labelled"], losses["lr"]) == (1.0, 0.03)
    expected = update_centres(torch.zeros(3, 16), *centre_differences(embedding, labels, torch.zeros(3, 16)),
                              alpha=0.25)
    assert torch.allclose(objective.centres, expected, atol=1e-6)
    assert torch.equal(objective.centres[2], torch.zeros(16))  # identity c is not in the batch
    # class 0: three samples, c <- 0 - 0.25 * sum(0 - x_i) / 4
    assert torch.allclose(objective.centres[0], 0.25 * embedding[labels == 0].sum(0) / 4, atol=1e-6)


def test_rows_without_identity_are_skipped_and_a_batch_without_any_is_an_error():
    objective = make()
    losses = objective.train_step(batch(1, [0, -1, 1, -1]), step=0)
    assert losses["labelled"] == 0.5
    assert torch.equal(objective.centres[2], torch.zeros(16))
    assert not torch.equal(objective.centres[0], torch.zeros(16))
    with pytest.raises(ValueError, match="no row with an identity"):
        objective.train_step(batch(2, [-1, -1]), step=1)
    with pytest.raises(ValueError, match="outside the 3 classes"):
        objective.train_step(batch(2, [0, 3]), step=1)
    with pytest.raises(ValueError, match="identity"):
        objective.train_step({"faces": {"image": batch(2, [0, 1])["faces"]["image"]}}, step=1)


def test_the_rate_is_divided_at_each_milestone():
    objective = make(lr=0.1, lr_milestones=[2, 4], lr_decay=0.1)
    assert [objective.learning_rate(s) for s in (0, 1, 2, 3, 4, 9)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001,
                                                                                        0.001])
    rates = [objective.train_step(batch(s, [0, 1, 2, 0]), step=s)["lr"] for s in range(3)]
    assert rates == pytest.approx([0.1, 0.1, 0.01])
    assert objective.optimizers["embedder"].param_groups[0]["lr"] == pytest.approx(0.01)


def test_a_checkpoint_continues_identically_and_keeps_its_label_map(tmp_path):
    straight = make()
    for step in range(4):
        straight.train_step(batch(step, [0, 1, 2, 1]), step=step)

    first = make()
    for step in range(2):
        first.train_step(batch(step, [0, 1, 2, 1]), step=step)
    first.save(str(tmp_path / "ckpt"), train_state={"step": 2})
    resumed = make(seed=7)  # other initial weights: everything comes from the checkpoint
    assert resumed.load(str(tmp_path / "ckpt")) == {"step": 2}
    for step in range(2, 4):
        resumed.train_step(batch(step, [0, 1, 2, 1]), step=step)
    assert torch.equal(resumed.centres, straight.centres)
    for name in ("embedder", "head"):
        for a, b in zip(resumed.networks[name].state_dict().values(), straight.networks[name].state_dict().values()):
            assert torch.equal(a, b), name

    with pytest.raises(ValueError, match="other people"):
        make(names=["a", "b", "d"]).load(str(tmp_path / "ckpt"))

    embedder = load_face_embedder(str(tmp_path / "ckpt"))
    assert isinstance(embedder, FaceEmbedder) and not embedder.training
    x = batch(9, [0, 1])["faces"]["image"]
    with torch.no_grad():
        assert torch.equal(embedder(x), first.networks["embedder"].eval()(x))
    with pytest.raises(ValueError, match="not a FaceEmbedder"):
        load_face_embedder(str(tmp_path / "ckpt"), network="head")


def demo_faces(identities: int, renders: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Renders of demo-world identities: uint8 crops, class index, render index."""
    rows = list(synthetic_face_rows(range(identities), renders_per_identity=renders, size=size, seed=0,
                                    split_fractions={"train": 1.0}))
    names = sorted({row["identity"] for row in rows})
    crops = np.stack([decode_png(row["image_png"]) for row in rows])
    labels = np.array([names.index(row["identity"]) for row in rows])
    return crops, labels, np.arange(len(rows)) % renders


def test_learns_identities_of_the_demo_world():
    """16 identities, 10 renders each to train on and 4 held-out renders (other pose, expression and
    light): after 120 steps (a few seconds) the held-out renders are identified against a gallery
    of one training render per identity far above chance (1/16) and far better than by an
    untrained embedder (measured over five seeds: 0.78-0.86 against 0.09-0.25)."""
    crops, labels, render = demo_faces(16, 14, 32)
    train, held_out, gallery = render < 10, render >= 10, render == 0
    objective = make(names=[str(i) for i in range(16)], embedder={**TINY, "embedding_dim": 32})
    images = torch.from_numpy(crops[train]).permute(0, 3, 1, 2).float() / 127.5 - 1
    targets = torch.from_numpy(labels[train])
    gen = torch.Generator().manual_seed(0)
    history = []
    for step in range(120):
        pick = torch.randperm(len(images), generator=gen)[:32]
        history.append(objective.train_step({"faces": {"image": images[pick], "identity": targets[pick]}}, step=step))
    assert np.mean([h["accuracy"] for h in history[-10:]]) > 0.9
    assert np.mean([h["softmax"] for h in history[-10:]]) < 0.2 * history[0]["softmax"]

    def rank1(embedder) -> float:
        return rank1_accuracy(face_embeddings(embedder, crops[gallery]), labels[gallery],
                              face_embeddings(embedder, crops[held_out]), labels[held_out])

    trained = rank1(objective.networks["embedder"].eval())
    untrained = rank1(FaceEmbedder(**{**TINY, "embedding_dim": 32}).eval())
    assert trained >= 0.6 and trained > untrained + 0.3, (trained, untrained)
