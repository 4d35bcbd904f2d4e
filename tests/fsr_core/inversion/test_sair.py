"""SAIR's terms and search on a tiny generator: the histogram CDF distance, the expression loss, reference
selection, each term switched off from the settings, a batch equal to its single searches, the restorer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fsr_core.inversion.sair import (SairSettings, expression_loss, face_mask, histogram_cdf_distance, sair,
                                     sair_search)
from fsr_core.networks.sair import ExpressionDirections, ReferencePool


def stand_in_embedder() -> nn.Module:
    """A fixed random conv net as the identity embedding ``T`` (a stand-in: the terms' wiring, not identity)."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
    return net.eval().requires_grad_(False)


@pytest.fixture
def parts(generator):
    """Generator (16 px), a pool of three references (W+ codes of three mapped z), expressions, embedder."""
    from fsr_core.inversion.latent import latent_statistics

    torch.manual_seed(0)
    codes = generator.style(torch.randn(3, generator.style_dim)).unsqueeze(1).repeat(1, generator.n_latent, 1)
    embedder = stand_in_embedder()
    with torch.no_grad():
        images, _ = generator([codes], input_is_latent=True, randomize_noise=False)
        embeddings = embedder(images)
    pool = ReferencePool(identities=["a", "b", "c"], layers=generator.n_latent, style_dim=generator.style_dim,
                         embedding_dim=embeddings.shape[1], identity="face_embedder").set(codes=codes,
                                                                                          embeddings=embeddings)
    expressions = ExpressionDirections(attributes=["smiling", "mouth_open"], layers=generator.n_latent,
                                       style_dim=generator.style_dim, lr_size=4)
    expressions.set(directions=torch.randn(2, generator.n_latent, generator.style_dim),
                    lr_weight=torch.randn(2, 48), lr_bias=torch.zeros(2))
    lr = torch.nn.functional.interpolate(images, size=(4, 4), mode="area")
    statistics = latent_statistics(generator, samples=500, seed=0)
    return {"generator": generator, "references": pool, "expressions": expressions, "embedder": embedder,
            "lr": lr, "images": images, "codes": codes, "statistics": statistics}


# ---------------------------------------------------------------------------- terms
def test_histogram_loss_zero_for_identical_and_growing_with_a_colour_shift():
    torch.manual_seed(0)
    image = torch.rand(2, 3, 16, 16) * 1.2 - 0.6
    mask = face_mask(16)
    assert torch.allclose(histogram_cdf_distance(image, image, mask_a=mask, mask_b=mask), torch.zeros(2))
    distances = [histogram_cdf_distance(image + shift, image, mask_a=mask, mask_b=mask)
                 for shift in (0.05, 0.1, 0.2, 0.4)]
    for smaller, larger in zip(distances, distances[1:]):
        assert (larger > smaller).all()
    # a shift of the red channel alone: about a third of the same shift of all three (mean over channels)
    red = image.clone()
    red[:, 0] += 0.2
    assert torch.allclose(histogram_cdf_distance(red, image, mask_a=mask, mask_b=mask), distances[2] / 3, rtol=0.05)
    # the integral of |CDF difference| of a shift is the shift (away from the range's ends)
    assert torch.allclose(distances[1], torch.full((2,), 0.1), atol=0.02)


def test_histogram_loss_only_counts_the_masked_face_and_is_differentiable():
    torch.manual_seed(0)
    a = torch.rand(1, 3, 16, 16) * 2 - 1
    b = a.clone()
    mask = face_mask(16)
    b[..., mask[0, 0] < 1e-3] = -1.0  # another background
    assert float(histogram_cdf_distance(a, b, mask_a=mask, mask_b=mask)) < 1e-3
    # sizes may differ (G(w) against Y), and gradients reach the image
    x = a.clone().requires_grad_(True)
    small = torch.nn.functional.interpolate(a, size=(8, 8), mode="area") + 0.1
    histogram_cdf_distance(x, small, mask_a=mask, mask_b=face_mask(8)).sum().backward()
    assert float(x.grad.abs().sum()) > 0


def test_face_mask_sits_on_the_template_face():
    mask = face_mask(64)[0, 0]
    assert float(mask[38, 32]) > 0.95  # between the eyes and the mouth
    assert float(mask[2, 2]) < 0.01 and float(mask[62, 32]) < 0.05
    assert 0.15 < float(mask.mean()) < 0.4


def test_expression_loss_is_the_papers_cosine():
    direction = torch.zeros(1, 2, 3)
    direction[0, 0, 0] = 1.0
    along = torch.zeros(1, 2, 3)
    along[0, 0, 0] = 5.0
    assert float(expression_loss(along, direction, gamma=0.1)) == pytest.approx(0.0, abs=1e-6)
    across = torch.zeros(1, 2, 3)
    across[0, 1, 2] = 5.0
    assert float(expression_loss(across, direction, gamma=0.0)) == pytest.approx(1.0, abs=1e-6)
    assert float(expression_loss(-along, direction, gamma=0.1)) == pytest.approx(2.0, abs=1e-6)


# ---------------------------------------------------------------------------- references
def test_reference_selection_nearest_and_wrong_identity(parts):
    pool: ReferencePool = parts["references"]
    picked = pool.select(pool.embeddings.clone())
    assert picked.tolist() == [0, 1, 2]
    wrong = pool.select(pool.embeddings.clone(), choice="wrong_identity")
    assert all(pool.identities[int(w)] != pool.identities[i] for i, w in enumerate(wrong))
    with pytest.raises(ValueError):
        pool.select(torch.zeros(1, 5))


def test_reference_pool_round_trips_through_a_bundle_spec(parts):
    from fsr_core.networks import build_network, network_spec

    pool = parts["references"]
    rebuilt = build_network(network_spec(pool))
    rebuilt.load_state_dict(pool.state_dict())
    assert rebuilt.identities == pool.identities and torch.equal(rebuilt.codes, pool.codes)


# ---------------------------------------------------------------------------- the search
def _run(parts, **settings):
    networks = {k: parts[k] for k in ("generator", "references", "expressions", "embedder")}
    base = {"steps": 8, "identity_network": "face_embedder", "statistics_samples": 500}
    return sair(parts["generator"], parts["lr"], seeds=[0, 1, 2], settings=SairSettings(**{**base, **settings}),
                statistics=parts["statistics"], references=networks["references"],
                expressions=networks["expressions"], networks=networks)


def test_search_picks_each_faces_reference_and_starts_there(parts):
    result = _run(parts, steps=1, learning_rate=1e-6)
    assert result.reference.tolist() == [0, 1, 2]
    assert torch.allclose(result.latent, parts["codes"], atol=1e-3)  # init w = w_z
    assert result.expression_signs.shape == (3, 2) and set(result.expression_signs.unique().tolist()) <= {-1.0, 1.0}


def test_each_term_switches_off(parts):
    """A search without a term needs none of its networks, and each term alone moves its own loss."""
    generator, lr, stats = parts["generator"], parts["lr"], parts["statistics"]
    only = {name: {**dict(fidelity=False, identity=False, expression=False, histogram=False), name: True}
            for name in ("fidelity", "identity", "expression", "histogram")}
    # no references, no expressions: fidelity and histogram from the mean code
    bare = sair(generator, lr, seeds=[0, 1, 2], statistics=stats,
                settings=SairSettings(steps=3, init="mean", identity=False, expression=False))
    assert bare.reference.tolist() == [-1, -1, -1] and bare.expression_signs.shape == (3, 0)
    with pytest.raises(ValueError, match="references"):
        sair(generator, lr, seeds=[0, 1, 2], statistics=stats, settings=SairSettings(steps=1, expression=False))
    with pytest.raises(ValueError, match="expressions"):
        sair(generator, lr, seeds=[0, 1, 2], statistics=stats, references=parts["references"],
             networks={"embedder": parts["embedder"]},
             settings=SairSettings(steps=1, identity_network="face_embedder"))
    with pytest.raises(ValueError, match="one or more"):
        SairSettings(**{**only["fidelity"], "fidelity": False})

    start = _run(parts, steps=1, learning_rate=1e-6, init="mean")
    shifted = {**parts, "lr": (parts["lr"] + 0.3).clamp(-1, 1)}  # a colour the mean face lacks
    mask_g, mask_y = face_mask(16), face_mask(4)
    results = {name: _run(shifted if name == "histogram" else parts, init="mean", learning_rate=0.05, **flags)
               for name, flags in only.items()}
    # fidelity alone lowers the LR error
    assert float(results["fidelity"].lr_error.mean()) < float(start.lr_error.mean())
    # identity alone raises T's similarity to the picked reference
    embed = parts["embedder"]

    def similarity(images):
        return torch.nn.functional.cosine_similarity(embed(images), parts["references"].embeddings, dim=1)

    assert float(similarity(results["identity"].image).mean()) > float(similarity(start.image).mean())
    # expression alone turns the code toward the signed directions
    signs = results["expression"].expression_signs
    targets = signs[:, :, None, None] * parts["expressions"].directions[None]

    def cosine(latent):
        return torch.stack([torch.nn.functional.cosine_similarity(latent.flatten(1), targets[:, k].flatten(1))
                            for k in range(2)], 1).mean()

    assert float(cosine(results["expression"].latent)) > float(cosine(start.latent))
    # histogram alone brings the face's colours toward the (shifted) input's
    before = histogram_cdf_distance(start.image, shifted["lr"], mask_a=mask_g, mask_b=mask_y)
    after = histogram_cdf_distance(results["histogram"].image, shifted["lr"], mask_a=mask_g, mask_b=mask_y)
    assert float(after.mean()) < float(before.mean())


def test_batch_equals_single_searches(parts):
    batch = _run(parts, steps=4, degradation={"blur_sigma": 0.5, "noise_sigma": 0.01})
    networks = {k: parts[k] for k in ("generator", "references", "expressions", "embedder")}
    for i in (0, 2):
        single = sair(parts["generator"], parts["lr"][i:i + 1], seeds=[i], statistics=parts["statistics"],
                      settings=SairSettings(steps=4, identity_network="face_embedder", statistics_samples=500,
                                            degradation={"blur_sigma": 0.5, "noise_sigma": 0.01}),
                      references=parts["references"], expressions=parts["expressions"], networks=networks)
        assert torch.allclose(single.image[0], batch.image[i], atol=1e-4)


def test_registered_search_runs_through_a_restorer_bundle(parts, tmp_path):
    """The search ``sair`` by name in a latent-search restorer, saved and loaded as a bundle: uint8 in and out."""
    from fsr_core.inversion import search_function
    from fsr_core.restore.restorer import RestorerCard, load_bundle, save_bundle, tensor_to_images
    from fsr_core.networks.face_embedder import FaceEmbedder

    assert search_function("sair") is sair_search
    torch.manual_seed(0)
    embedder = FaceEmbedder(input_size=16, embedding_dim=8, channels=[4, 8], blocks_per_stage=0).eval()
    with torch.no_grad():
        embeddings = embedder(parts["images"])
    pool = ReferencePool(identities=["a", "b", "c"], layers=parts["generator"].n_latent,
                         style_dim=parts["generator"].style_dim, embedding_dim=8,
                         identity="face_embedder").set(codes=parts["codes"], embeddings=embeddings)
    card = RestorerCard(kind="latent_search", input_size=4, scale=4, search="sair",
                        networks=("generator", "references", "expressions", "embedder"),
                        settings={"steps": 3, "identity_network": "face_embedder", "statistics_samples": 500,
                                  "degradation": {"noise_sigma": "auto"}})
    networks = {"generator": parts["generator"], "references": pool, "expressions": parts["expressions"],
                "embedder": embedder}
    save_bundle(str(tmp_path / "bundle"), card, networks)
    restorer = load_bundle(str(tmp_path / "bundle"))
    lr = tensor_to_images(parts["lr"])
    out = restorer.restore(lr, batch_size=2)
    assert out.shape == (3, 16, 16, 3) and out.dtype.name == "uint8"
    with pytest.raises(ValueError, match="unknown SAIR setting"):
        sair_search(networks, parts["lr"], seed=0, step=3)


# ---------------------------------------------------------------------------- a given reference per face
def _pool(parts, identities):
    pool: ReferencePool = parts["references"]
    return ReferencePool(identities=identities, layers=pool.layers, style_dim=pool.style_dim,
                         embedding_dim=pool.embedding_dim, identity=pool.identity).set(codes=pool.codes,
                                                                                       embeddings=pool.embeddings)


def test_given_identity_picks_among_that_persons_references(parts):
    """With each face's identity given, the reference is its identity's most similar one (even when another
    person's is closer by ``T``); ``wrong_identity`` then takes the most similar of another person's; an
    identity the pool lacks is refused, naming it; without identities the pick is the unchanged ``T`` pick."""
    pool = _pool(parts, ["a", "a", "b"])
    query = pool.embeddings.clone()
    similarity = pool(query)
    assert pool.select(query).tolist() == [0, 1, 2]
    given = pool.select(query, identities=["b", "a", "a"])
    assert given[0].item() == 2  # face 0 looks like reference 0 ('a') but is 'b': b's only reference
    assert given[2].item() == int(similarity[2, :2].argmax())  # face 2 is 'a': the closer of a's two
    assert given[1].item() == 1
    wrong = pool.select(query, choice="wrong_identity", identities=["b", "a", "a"])
    assert wrong[0].item() == int(similarity[0, :2].argmax()) and wrong[1:].tolist() == [2, 2]
    with pytest.raises(ValueError, match=r"no reference of identity\(ies\) \['zed'\]"):
        pool.select(query, identities=["a", "zed", "a"])
    with pytest.raises(ValueError, match="2 identities for 3 faces"):
        pool.select(query, identities=["a", "b"])
    with pytest.raises(ValueError, match="empty or None"):
        pool.select(query, identities=["a", None, "b"])
    assert pool.select(query, choice="wrong_identity").tolist() == \
        pool.select(query, choice="wrong_identity", identities=[pool.identities[i] for i in [0, 1, 2]]).tolist()


def test_search_with_given_identities_starts_at_their_references(parts):
    networks = {k: parts[k] for k in ("generator", "references", "expressions", "embedder")}
    settings = SairSettings(steps=1, learning_rate=1e-6, identity_network="face_embedder", statistics_samples=500,
                            reference_identity="given")
    result = sair(parts["generator"], parts["lr"], seeds=[0, 1, 2], settings=settings, statistics=parts["statistics"],
                  references=parts["references"], expressions=parts["expressions"], networks=networks,
                  identities=["c", "a", "b"])
    assert result.reference.tolist() == [2, 0, 1]
    assert torch.allclose(result.latent, parts["codes"][[2, 0, 1]], atol=1e-3)  # init w = the given person's w_z
    with pytest.raises(ValueError, match="needs each face's identity"):
        sair(parts["generator"], parts["lr"], seeds=[0, 1, 2], settings=settings, statistics=parts["statistics"],
             references=parts["references"], expressions=parts["expressions"], networks=networks)
    with pytest.raises(ValueError, match="reference_identity must be auto or given"):
        SairSettings(reference_identity="mine")


def test_restorer_card_condition_reaches_the_search(parts):
    """A card naming the condition ``identity``: ``restore`` refuses to run without it (naming it) and hands
    each face's identity to the search, batch by batch."""
    from fsr_core.restore.restorer import FixedConditions, LatentSearchRestorer, RestorerCard, tensor_to_images

    card = RestorerCard(kind="latent_search", input_size=4, scale=4, search="sair", conditions=("identity",),
                        networks=("generator", "references", "expressions", "embedder"),
                        settings={"steps": 1, "learning_rate": 1e-6, "identity_network": "face_embedder",
                                  "statistics_samples": 500, "reference_identity": "given", "expression": False,
                                  "histogram": False})
    networks = {k: parts[k] for k in ("generator", "references", "expressions", "embedder")}
    restorer = LatentSearchRestorer(card, networks)
    lr = tensor_to_images(parts["lr"])
    with pytest.raises(ValueError, match="reads the per-face condition 'identity'"):
        restorer.restore(lr)
    with pytest.raises(ValueError, match="empty for 1 of 3 faces"):
        restorer.restore(lr, conditions={"identity": ["a", None, "c"]})
    with pytest.raises(ValueError, match="one value per face"):  # not split into the letters a, b, c
        restorer.restore(lr, conditions={"identity": "abc"})
    assert restorer.restore(lr[:0]).shape == (0, 16, 16, 3)  # nothing to restore, nothing needed
    # each face restored from its given person's reference, whatever batch it falls in
    swapped = restorer.restore(lr, batch_size=2, conditions={"identity": ["c", "a", "b"]})
    single = [restorer.restore(lr[i:i + 1], conditions={"identity": [name]}) for i, name in enumerate("cab")]
    assert all((swapped[i] == single[i][0]).all() for i in range(3))
    straight = restorer.restore(lr, conditions={"identity": ["a", "b", "c"]})
    assert not (swapped[0] == straight[0]).all()
    fixed = FixedConditions(restorer, {"identity": "c"})
    assert (fixed.restore(lr[:1]) == single[0]).all()  # every face 'c'
    assert (fixed.restore(lr[:2], conditions={"identity": [None, "a"]})[1] == straight[0]).all()


def test_card_conditions_are_checked():
    from fsr_core.restore.restorer import RestorerCard

    with pytest.raises(ValueError, match="unknown or repeated per-face condition"):
        RestorerCard(kind="latent_search", input_size=4, scale=4, search="sair", networks=("g",),
                     conditions=("age",))
    with pytest.raises(ValueError, match="only a latent_search restorer reads per-face conditions"):
        RestorerCard(kind="feed_forward", input_size=4, scale=4, networks=("g",), conditions=("identity",))
    card = RestorerCard(kind="latent_search", input_size=4, scale=4, search="sair", networks=("g",),
                        conditions=("identity",))
    assert RestorerCard.from_dict(card.to_dict()) == card
    assert RestorerCard.from_dict({k: v for k, v in card.to_dict().items() if k != "conditions"}).conditions == ()
    plain = RestorerCard(kind="latent_search", input_size=4, scale=4, search="sair", networks=("g",))
    assert "conditions" not in plain.to_dict()  # a card without conditions reads as before

    from fsr_core.training.objective import RestorerSpec

    spec = RestorerSpec(kind="latent_search", networks=("g",), input_size=4, scale=4, search="sair",
                        conditions=("identity",))
    assert spec.to_dict()["conditions"] == ["identity"]
    assert "conditions" not in RestorerSpec(kind="feed_forward", networks=("g",), input_size=4, scale=4).to_dict()
    with pytest.raises(ValueError, match="only a latent_search restorer"):
        RestorerSpec(kind="feed_forward", networks=("g",), input_size=4, scale=4, conditions=("identity",))
    with pytest.raises(ValueError, match="unknown or repeated"):
        RestorerSpec(kind="latent_search", networks=("g",), input_size=4, scale=4, search="s", conditions=("x",))


def test_scoring_batches_hand_their_identity_column_to_the_restorer(parts):
    """What evaluate / compare actors do: a batch of HR crops with the face rows' ``identity`` column is
    scored by a restorer that reads it, each face from its own person's reference."""
    from fsr_core.restore.batch import SuperResolutionScorer
    from fsr_core.restore.restorer import LatentSearchRestorer, RestorerCard, tensor_to_images

    card = RestorerCard(kind="latent_search", input_size=4, scale=4, search="sair", conditions=("identity",),
                        networks=("generator", "references", "expressions", "embedder"),
                        settings={"steps": 1, "learning_rate": 1e-6, "identity_network": "face_embedder",
                                  "statistics_samples": 500, "reference_identity": "given"})
    restorer = LatentSearchRestorer(card, {k: parts[k] for k in ("generator", "references", "expressions",
                                                                 "embedder")})
    scorer = SuperResolutionScorer(model_uri="m", loader=lambda uri, tracking_uri=None, device="cpu": (restorer, {}),
                                   scale=4, crop_border=0)
    hr = tensor_to_images(parts["images"])
    right = scorer({"id": ["0", "1", "2"], "image": hr, "identity": ["a", "b", "c"]})
    swapped = scorer({"id": ["0", "1", "2"], "image": hr, "identity": ["b", "c", "a"]})
    assert (right["psnr_y"] > swapped["psnr_y"]).all()  # a face searched from its own reference is nearer its HR
    with pytest.raises(ValueError, match="condition 'identity'"):
        scorer({"id": ["0"], "image": hr[:1]})
