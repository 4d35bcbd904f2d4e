"""Embedding aligned faces with the project's face embedder, and their cosine similarity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsr_core.metrics.face_embedding import embed, embedding_similarity, face_embeddings
from fsr_core.networks.face_embedder import FaceEmbedder


@pytest.fixture()
def network() -> FaceEmbedder:
    torch.manual_seed(0)
    return FaceEmbedder(input_size=32, embedding_dim=8, channels=(4, 8)).eval()


def crops(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_embeddings_are_unit_rows_equal_to_the_torch_function(network):
    faces = crops(5, 32, 0)
    out = face_embeddings(network, faces, batch_size=2)  # three batches
    assert out.shape == (5, 8) and out.dtype == np.float64
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0)
    x = torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        assert np.allclose(out, embed(network, x).double().numpy(), atol=1e-6)
    assert face_embeddings(network, faces[:0]).shape == (0, 8)


def test_embed_is_differentiable(network):
    x = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
    e = embed(network, x)
    assert torch.allclose(e.norm(dim=1), torch.ones(2))
    e[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_similarity_of_a_face_with_itself_is_one_at_any_size(network):
    faces = crops(3, 32, 1)
    assert np.allclose(embedding_similarity(network, faces, faces), 1.0)
    bigger = np.repeat(np.repeat(faces, 4, axis=1), 4, axis=2)  # 128 px: resized by the embedder
    similarity = embedding_similarity(network, faces, bigger)
    assert similarity.shape == (3,) and np.all(similarity > 0.9)
    other = embedding_similarity(network, faces, crops(3, 32, 2))
    assert np.all(other < 1.0)


def test_errors(network):
    with pytest.raises(ValueError, match="uint8"):
        face_embeddings(network, crops(2, 32, 0).astype(np.float32))
    with pytest.raises(ValueError, match="same number"):
        embedding_similarity(network, crops(2, 32, 0), crops(3, 32, 0))
    with pytest.raises(ValueError, match="eval mode"):
        face_embeddings(network.train(), crops(2, 32, 0))


def test_the_metric_embedder_loads_from_a_checkpoint_folder_or_s3_prefix(network, tmp_path, s3_bucket):
    import hashlib

    from fsr_core import storage
    from fsr_core.metrics.face_embedding import embedder_weights_uri, load_metric_embedder
    from fsr_core.training.checkpoint import save_checkpoint

    folder = save_checkpoint(str(tmp_path / "ckpt"), networks={"embedder": network}, train_state={})
    faces = crops(3, 32, 3)
    for checkpoint in (folder, f"{s3_bucket}/ckpt"):
        if checkpoint.startswith("s3://"):
            for name in ("networks.json", "weights/embedder.pt"):
                storage.upload_file(str(tmp_path / "ckpt" / name), f"{checkpoint}/{name}")
        loaded = load_metric_embedder(checkpoint)
        assert not loaded.training
        np.testing.assert_array_equal(face_embeddings(loaded, faces), face_embeddings(network, faces))
        assert storage.sha256(embedder_weights_uri(checkpoint)) == \
            hashlib.sha256((tmp_path / "ckpt" / "weights" / "embedder.pt").read_bytes()).hexdigest()
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_metric_embedder(str(tmp_path / "nowhere"))
