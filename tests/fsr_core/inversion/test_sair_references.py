"""Reference selection in the demo world: an input face's reference is the pool's render of its identity.

T is the project's own face embedder (dlib's descriptor, trained on photographs, tells 4 of 10 of the demo's
rendered identities apart even from 128 px renders), trained here for a few seconds on other renders of the
same identities with softmax, half its batches seen through a x2 bicubic round trip, as the demo's LR is."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IDENTITIES, RENDERS = 6, 5


def test_reference_selection_picks_the_right_identity_in_the_demo_world():
    from fsr_core.data.codec import decode_png
    from fsr_core.data.demo_world import synthetic_face_rows
    from fsr_core.degradation.resize import imresize, imresize_torch
    from fsr_core.inversion.distances import make_embedding
    from fsr_core.networks.face_embedder import FaceEmbedder
    from fsr_core.networks.sair import ReferencePool
    from fsr_core.restore.restorer import images_to_tensor

    torch.set_num_threads(1)
    rows = list(synthetic_face_rows(list(range(100000, 100000 + IDENTITIES)), renders_per_identity=RENDERS,
                                    size=64, seed=0, split_fractions={"test": 1.0}))
    faces = images_to_tensor(np.stack([imresize(decode_png(row["image_png"]), output_size=(32, 32)) for row in rows]))
    identity = torch.arange(len(rows)) // RENDERS
    render = torch.arange(len(rows)) % RENDERS
    train, query, reference = render < 3, render == 3, render == 4  # the query and reference renders are unseen

    torch.manual_seed(0)
    embedder = FaceEmbedder(input_size=32, embedding_dim=16, channels=[8, 16, 32], blocks_per_stage=0)
    head = torch.nn.Linear(16, IDENTITIES)
    optimiser = torch.optim.Adam([*embedder.parameters(), *head.parameters()], lr=3e-3)
    x, y = faces[train], identity[train]
    for step in range(80):
        pick = torch.randint(0, len(x), (12,), generator=torch.Generator().manual_seed(step))
        batch = x[pick]
        if step % 2:
            batch = imresize_torch(imresize_torch(batch, output_size=(16, 16)), output_size=(32, 32))
        loss = F.cross_entropy(head(F.normalize(embedder(batch), dim=1) * 10.0), y[pick])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    embedder.eval().requires_grad_(False)

    embed = make_embedding("face_embedder", networks={"embedder": embedder})
    names = [f"person{int(i)}" for i in identity[reference]]
    with torch.no_grad():
        pool = ReferencePool(identities=names, layers=1, style_dim=1, embedding_dim=16, identity="face_embedder").set(
            codes=torch.zeros(IDENTITIES, 1, 1), embeddings=embed(faces[reference]))
        lr = imresize_torch(faces[query], output_size=(16, 16))  # the inputs: x2 LR of unseen renders
        queries = embed(imresize_torch(lr, output_size=(32, 32)))  # as the search does: bicubic up to G's size
        nearest = pool.select(queries)
        wrong = pool.select(queries, choice="wrong_identity")
    truth = [f"person{int(i)}" for i in identity[query]]
    picked = [names[int(i)] for i in nearest]
    correct = float(np.mean([a == b for a, b in zip(picked, truth)]))
    assert correct >= 4 / IDENTITIES, (picked, truth)  # chance: 1/6
    assert all(names[int(w)] != names[int(n)] for w, n in zip(wrong, nearest))
