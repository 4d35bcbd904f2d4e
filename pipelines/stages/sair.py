"""Stage ``sair_latent``: SAIR (``METHODS.md`` section 4) fitted on a StyleGAN2 prior, as restorers to register.

Inputs: ``generator`` (a ``stylegan2_prior`` checkpoint), ``references`` (face shards with identities: the
reference pool), ``attributes`` (face shards with attribute labels: the attribute source of the expression
directions; the demo world's ``smiling``, ``mouth_open``) and, optionally, ``embedder`` (a
``face_embedder_train`` checkpoint: ``T`` when ``sair.identity_network`` is ``face_embedder``; without it
dlib's descriptor). The stage

1. picks ``references_per_identity`` faces of each identity of ``references`` (the *last* ones in shard
   order: the demo's compare set shows the same identities' first renders) and inverts them, and up to
   ``max_attribute_faces`` faces of ``attributes``, into W+ (:mod:`pipelines.inversion_job`: batched Ray
   tasks, resumable per batch) -> output ``codes``;
2. builds the :class:`~fsr_core.networks.sair.ReferencePool` (``w_z`` and ``T(Z)`` per reference) ->
   output ``pool`` (what ``fsr restore --references`` takes);
3. fits, per attribute, a linear classifier (scikit-learn ``LogisticRegression``) on the attribute faces'
   W+ codes, whose unit normal is ``dw_e``, and one on the same faces' LR pixels (MATLAB bicubic to
   ``lr_size``) that infers the attribute of an input face (the paper's expression detector on the LQ
   image): :class:`~fsr_core.networks.sair.ExpressionDirections`; logs each classifier's accuracy;
4. runs the ablation: ``ablation_faces`` faces of the pool's identities that are not references, their
   HR degraded by SAIR's own ``D`` (noise drawn, seeded), searched with every term, with each term off,
   with the fidelity term alone and with a wrong-identity reference; logs per variant the mean identity
   similarity to the HR (``T``'s cosine; named after ``T``), the LR error and the HR MSE (MLflow metrics
   ``ablation_<variant>_<metric>`` and the artifact ``sair_ablation.json``);
5. writes output ``checkpoint``: networks ``generator``, ``prior`` (latent statistics), ``references``,
   ``expressions`` (and ``embedder``), exporting the latent-search restorers ``sair`` (search ``sair``,
   the stage's ``sair`` settings) and ``sair_wrong_reference`` (the same with ``reference_choice:
   wrong_identity``, the README's study); with ``sair.reference_identity: given`` both cards name the
   per-face condition ``identity`` (each face's reference comes from its own identity's references, or for
   the wrong one from another's), and the ablation hands its faces' identities over.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Literal

import numpy as np
from pydantic import Field

from fsr_core import storage
from pipelines.stage import Stage, StageContext, StageParams
from pipelines.stages.two_step_latent import ProjectionParams

__all__ = ["SAIR_LATENT", "SairDegradationParams", "SairLatentParams", "SairSearchParams", "sair_latent"]


class SairDegradationParams(StageParams):
    """SAIR's ``D`` (:mod:`fsr_core.degradation.differentiable`); the scale is the generator's size over the
    input's."""

    blur_sigma: float = Field(0.0, ge=0, description="Gaussian blur of the HR image, pixels (0: none)")
    downsample: Literal["bicubic", "area"] = Field("bicubic", description="the paper: bicubic")
    noise_sigma: float | Literal["auto"] = Field(0.0, description="[-1,1] units; auto: robust MAD per face")
    jpeg_quality: float | Literal["auto"] | None = Field(
        None, description="differentiable JPEG quality; auto: the requantisation fixed point per face; null: none")


class SairSearchParams(StageParams):
    """Settings of the ``sair`` search (:class:`~fsr_core.inversion.sair.SairSettings`; the paper's values)."""

    steps: int = Field(400, ge=1, description="paper: 400 Adam iterations")
    learning_rate: float = Field(0.1, gt=0, description="paper: 0.1")
    fidelity: bool = Field(True, description="L_d on/off")
    identity: bool = Field(True, description="L_ID on/off")
    expression: bool = Field(True, description="L_e on/off")
    histogram: bool = Field(True, description="L_hist on/off")
    identity_weight: float = Field(1.0, ge=0)
    latent_weight: float = Field(0.001, ge=0, description="lambda (paper: 0.001)")
    expression_weight: float = Field(0.1, ge=0, description="alpha1 (paper: 0.1)")
    histogram_weight: float = Field(0.05, ge=0, description="alpha2 (paper: 0.05)")
    init: Literal["reference", "mean"] = Field("reference", description="paper: w = w_z")
    reference_choice: Literal["nearest", "wrong_identity"] = "nearest"
    reference_identity: Literal["auto", "given"] = Field(
        "auto", description="auto: the reference picked by T alone; given: among the references of each face's "
                            "identity (the restorers then read the per-face condition 'identity'; the paper)")
    identity_network: Literal["dlib", "face_embedder"] = Field("dlib", description="T (paper: ArcFace)")
    expression_gamma: float | None = Field(None, description="gamma of Eq. 6 (null: the learning rate)")
    expression_origin: Literal["zero", "mean"] = Field("zero", description="zero: Eq. 6 as written")
    histogram_bins: int = Field(32, ge=2)
    histogram_bandwidth: float = Field(0.5, gt=0, description="soft binning, in bins")
    mask_width: float = Field(1.0, gt=0, description="face ellipse, inter-ocular distances")
    mask_height: float = Field(1.0, gt=0, description="face ellipse, eye-to-mouth distances")
    fidelity_reduction: Literal["sum", "mean"] = Field("sum", description="sum: the squared Frobenius norm")
    fidelity_noise: Literal["expectation", "sample"] = "expectation"
    degradation: SairDegradationParams = Field(default_factory=SairDegradationParams)
    optimise_noise: bool = Field(False, description="the paper optimises w only")
    noise_regularize: float = Field(0.0, ge=0)
    dlib_weights: str | None = None
    template: str = "ffhq"

    def settings(self, **extra: Any) -> dict[str, Any]:
        return {**self.model_dump(mode="json"), **extra}


class SairLatentParams(StageParams):
    lr_size: int = Field(16, ge=1, description="LR crop size the restorers take")
    reference_split: str | None = Field(None, description="split of the references input (null: all rows)")
    references_per_identity: int = Field(1, ge=1, description="the last ones of each identity in shard order")
    attribute_split: str | None = Field("train", description="split of the attributes input")
    attribute_names: list[str] = Field(default_factory=lambda: ["smiling", "mouth_open"], min_length=1,
                                       description="attributes (expressions) with a direction each")
    max_attribute_faces: int = Field(64, ge=4)
    classifier_c: float = Field(1.0, gt=0, description="LogisticRegression's C (both classifiers)")
    generator_ema: bool = True
    inversion: ProjectionParams = Field(default_factory=lambda: ProjectionParams(perceptual="none"),
                                        description="W+ projection of references and attribute faces")
    sair: SairSearchParams = Field(default_factory=SairSearchParams)
    ablation_faces: int = Field(4, ge=0, description="faces of the ablation (0: none)")
    ablation_noise_sigma: float = Field(0.02, ge=0, description="noise drawn into the ablation's LR")
    statistics_samples: int = Field(10000, ge=2)
    statistics_seed: int = 0
    batch_size: int = Field(32, ge=1, description="faces per inversion task")
    seed: int = Field(0, ge=0)
    task_cpus: float = Field(1.0, gt=0)
    task_gpus: float = Field(0.0, ge=0)
    torch_threads: int | None = Field(None, ge=1)


def _rows(uri: str, *, split: str | None, columns: list[str]) -> dict[str, list]:
    from fsr_core.data.shards import read_faces

    table = read_faces(uri, columns=columns, split=split)
    return {name: table.column(name).to_pylist() for name in columns}


def _decode(pngs: list[bytes], size: int) -> np.ndarray:
    from fsr_core.data.codec import decode_png
    from fsr_core.degradation.resize import imresize

    images = [decode_png(data) for data in pngs]
    return np.stack([image if image.shape[0] == size else imresize(image, output_size=(size, size))
                     for image in images])


def pick_references(identities: list[str | None], *, per_identity: int) -> tuple[list[int], list[int]]:
    """Row indices of the references (the last ``per_identity`` rows of each identity, in row order) and of
    the other rows of the same identities; rows without an identity are skipped."""
    by_identity: dict[str, list[int]] = {}
    for index, name in enumerate(identities):
        if name:
            by_identity.setdefault(str(name), []).append(index)
    references = sorted(i for rows in by_identity.values() for i in rows[-per_identity:])
    others = sorted(i for rows in by_identity.values() for i in rows[:-per_identity])
    if len(by_identity) < 2:
        raise ValueError(f"a reference pool needs two or more identities, found {len(by_identity)}")
    return references, others


def _linear_direction(x: np.ndarray, y: np.ndarray, *, c: float, seed: int) -> tuple[np.ndarray, float, float]:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(x, y)
    return model.coef_[0].astype(np.float32), float(model.intercept_[0]), float(model.score(x, y))


def sair_latent(ctx: StageContext, generator: str, references: str, attributes: str,
                embedder: str | None = None) -> dict[str, str]:
    import torch

    from fsr_core.inversion.batch import load_checkpoint_network
    from fsr_core.inversion.distances import make_embedding
    from fsr_core.inversion.latent import latent_statistics
    from fsr_core.networks.latent_prior import LatentPrior
    from fsr_core.networks.sair import ExpressionDirections, ReferencePool
    from fsr_core.restore.restorer import images_to_tensor
    from fsr_core.training.checkpoint import save_checkpoint
    from pipelines.inversion_job import invert_faces, read_codes
    from pipelines.references import save_pool

    p: SairLatentParams = ctx.params  # type: ignore[assignment]
    if p.torch_threads:
        torch.set_num_threads(p.torch_threads)
    gen = load_checkpoint_network(generator, "generator", ema=p.generator_ema)
    if gen.size % p.lr_size:
        raise ValueError(f"the generator's {gen.size} px must be a multiple of lr_size {p.lr_size}")
    networks_extra: dict[str, Any] = {}
    if p.sair.identity_network == "face_embedder":
        if embedder is None:
            raise ValueError("sair.identity_network face_embedder needs the input 'embedder'")
        networks_extra["embedder"] = load_checkpoint_network(embedder, "embedder", ema=False)

    ref_rows = _rows(references, split=p.reference_split, columns=["id", "image_png", "identity"])
    ref_index, other_index = pick_references(ref_rows["identity"], per_identity=p.references_per_identity)
    ref_images = _decode([ref_rows["image_png"][i] for i in ref_index], gen.size)
    ref_ids = [ref_rows["id"][i] for i in ref_index]
    ref_names = [str(ref_rows["identity"][i]) for i in ref_index]
    attr_rows = _rows(attributes, split=p.attribute_split, columns=["id", "image_png", "attributes"])
    count = min(p.max_attribute_faces, len(attr_rows["id"]))
    attr_images = _decode(attr_rows["image_png"][:count], gen.size)
    attr_ids = attr_rows["id"][:count]
    labels = [json.loads(text or "{}") for text in attr_rows["attributes"][:count]]

    inverter = {"generator_checkpoint": generator, "generator_ema": p.generator_ema,
                "projection": p.inversion.model_dump(mode="json"), "spaces": ["w_plus"],
                "statistics_samples": p.statistics_samples, "statistics_seed": p.statistics_seed,
                "torch_threads": p.torch_threads}
    summary = invert_faces(
        ctx.outputs["codes"], {"references": ref_images, "attributes": attr_images},
        {"references": ref_ids, "attributes": list(attr_ids)}, inverter=inverter, batch_size=p.batch_size,
        seed=p.seed, num_cpus=p.task_cpus, num_gpus=p.task_gpus,
        report=lambda done, total, faces: ctx.report(done, total, unit="batches", faces=faces))
    codes = read_codes(ctx.outputs["codes"])
    by_id = {(s, i): row for s, i, row in zip(codes.column("set").to_pylist(), codes.column("id").to_pylist(),
                                               codes.column("w_plus").to_pylist())}
    shape = (gen.n_latent, gen.style_dim)
    w_ref = torch.tensor(np.asarray([by_id[("references", i)] for i in ref_ids], np.float32)).view(-1, *shape)
    w_attr = np.asarray([by_id[("attributes", i)] for i in attr_ids], np.float32)

    embed = make_embedding(p.sair.identity_network, networks=networks_extra, dlib_weights=p.sair.dlib_weights,
                           template=p.sair.template)
    with torch.no_grad():
        ref_embeddings = torch.cat([embed(images_to_tensor(ref_images[i:i + 16]))
                                    for i in range(0, len(ref_images), 16)])
    pool = ReferencePool(identities=ref_names, layers=gen.n_latent, style_dim=gen.style_dim,
                         embedding_dim=int(ref_embeddings.shape[1]), identity=p.sair.identity_network).set(
        codes=w_ref, embeddings=ref_embeddings)
    save_pool(ctx.outputs["pool"], pool)

    from fsr_core.degradation.resize import imresize

    lr_pixels = np.stack([imresize(image, output_size=(p.lr_size, p.lr_size)) for image in attr_images])
    lr_flat = (images_to_tensor(lr_pixels).flatten(1)).numpy()
    directions, lr_weights, lr_biases = [], [], []
    metrics: dict[str, float] = {"references": len(ref_index), "reference_identities": len(set(ref_names)),
                                 "attribute_faces": count, "inversion_batches_reused": summary["batches_reused"]}
    for name in p.attribute_names:
        y = np.asarray([int(bool(label.get(name, 0))) for label in labels])
        if y.min() == y.max():
            raise ValueError(f"attribute {name!r} has one value over the {count} attribute faces; a direction needs "
                             "both")
        normal, _, latent_accuracy = _linear_direction(w_attr, y, c=p.classifier_c, seed=p.seed)
        weight, bias, lr_accuracy = _linear_direction(lr_flat, y, c=p.classifier_c, seed=p.seed)
        directions.append(normal)
        lr_weights.append(weight)
        lr_biases.append(bias)
        metrics[f"direction_{name}_latent_accuracy"] = latent_accuracy
        metrics[f"direction_{name}_lr_accuracy"] = lr_accuracy
        metrics[f"direction_{name}_positive_fraction"] = float(y.mean())
    expressions = ExpressionDirections(attributes=list(p.attribute_names), layers=gen.n_latent,
                                       style_dim=gen.style_dim, lr_size=p.lr_size).set(
        directions=torch.tensor(np.stack(directions)), lr_weight=torch.tensor(np.stack(lr_weights)),
        lr_bias=torch.tensor(lr_biases))
    prior = LatentPrior(style_dim=gen.style_dim).set(
        statistics=latent_statistics(gen, samples=p.statistics_samples, seed=p.statistics_seed))
    networks = {"generator": gen, "prior": prior, "references": pool, "expressions": expressions, **networks_extra}

    if p.ablation_faces:
        others = other_index[:p.ablation_faces]
        if others:
            hr = _decode([ref_rows["image_png"][i] for i in others], gen.size)
            ablation = run_ablation(networks, hr, settings=p.sair.settings(statistics_samples=p.statistics_samples,
                                                                           statistics_seed=p.statistics_seed),
                                    lr_size=p.lr_size, noise_sigma=p.ablation_noise_sigma, seed=p.seed,
                                    truth=[str(ref_rows["identity"][i]) for i in others])
            for variant, values in ablation.items():
                metrics.update({f"ablation_{variant}_{key}": value for key, value in values.items()
                                if isinstance(value, float)})
            ctx.log_dict({"faces": len(others), "variants": ablation}, "sair_ablation.json")
    ctx.log_metrics(metrics)
    ctx.set_tags({"fsr_identity_network": p.sair.identity_network,
                  "fsr_sair_terms": ",".join(k for k in ("fidelity", "identity", "expression", "histogram")
                                             if getattr(p.sair, k))})

    scale = gen.size // p.lr_size
    names = ["generator", "prior", "references", "expressions", *networks_extra]
    settings = p.sair.settings(statistics_samples=p.statistics_samples, statistics_seed=p.statistics_seed)
    conditions = ["identity"] if p.sair.reference_identity == "given" else []
    restorers = {
        "sair": {"kind": "latent_search", "networks": names, "input_size": p.lr_size, "scale": scale,
                 "search": "sair", "settings": settings, "conditions": conditions},
        "sair_wrong_reference": {"kind": "latent_search", "networks": names, "input_size": p.lr_size,
                                 "scale": scale, "search": "sair", "conditions": conditions,
                                 "settings": {**settings, "reference_choice": "wrong_identity"}},
    }
    state = {"step": 0, "objective": "sair_latent", "generator_checkpoint": generator, "metrics": metrics}
    out = ctx.outputs["checkpoint"]
    folder = tempfile.mkdtemp(prefix="fsr-sair-") if storage.is_s3(out) else out
    save_checkpoint(folder, networks=networks, train_state=state, restorers=restorers)
    if folder != out:
        files = sorted(os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
                       for root, _, names_ in os.walk(folder) for name in names_)
        for rel in sorted(files, key=lambda rel: rel == "networks.json"):
            storage.upload_file(os.path.join(folder, rel), storage.join(out, rel))
    return {"checkpoint": out, "codes": ctx.outputs["codes"], "pool": ctx.outputs["pool"]}


ABLATION = {
    "full": {},
    "no_identity": {"identity": False},
    "no_expression": {"expression": False},
    "no_histogram": {"histogram": False},
    "fidelity_only": {"identity": False, "expression": False, "histogram": False, "init": "mean"},
    "wrong_reference": {"reference_choice": "wrong_identity"},
}
"""The ablation's variants: settings over the stage's (``fidelity_only`` starts at the mean code: without
the reference it is PULSE-like)."""


def run_ablation(networks: dict, hr: np.ndarray, *, settings: dict[str, Any], lr_size: int, noise_sigma: float,
                 seed: int, truth: list[str]) -> dict[str, dict[str, Any]]:
    """Each variant of :data:`ABLATION` on HR faces ``hr`` (uint8 at the generator's size, of identities
    ``truth``, which ``reference_identity: given`` reads) degraded by SAIR's ``D`` with noise drawn:
    ``{variant: {identity_<T>, lr_error, hr_mse, reference_correct, terms}}``."""
    import torch

    from fsr_core.degradation.differentiable import DegradationSettings
    from fsr_core.inversion.distances import make_embedding
    from fsr_core.inversion.latent import statistics_from
    from fsr_core.inversion.sair import SairSettings, sair
    from fsr_core.restore.restorer import images_to_tensor

    generator = networks["generator"]
    x = images_to_tensor(hr)
    degradation = {**settings.get("degradation", {})}
    known = {k: v for k, v in degradation.items() if v != "auto"}
    operator = DegradationSettings(scale=generator.size // lr_size, **{**known, "noise_sigma": noise_sigma}).resolve(
        torch.zeros(len(hr), 3, lr_size, lr_size))
    with torch.no_grad():
        lr = operator(x, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)
        lr = ((lr + 1) * 127.5).round() / 127.5 - 1  # uint8 levels, as an LR crop has
    statistics = statistics_from(networks["prior"].statistics(), generator, samples=2, seed=0)
    embed = make_embedding(settings["identity_network"], networks=networks, dlib_weights=settings.get("dlib_weights"),
                           template=settings.get("template", "ffhq"))
    with torch.no_grad():
        hr_embedding = embed(x)
    pool = networks["references"]
    out: dict[str, dict[str, Any]] = {}
    for variant, change in ABLATION.items():
        parsed = SairSettings.from_mapping({**settings, **change})
        result = sair(generator, lr, seeds=[seed + i for i in range(len(hr))], settings=parsed,
                      statistics=statistics, references=pool, expressions=networks["expressions"],
                      networks=networks, identities=truth)
        with torch.no_grad():
            identity = torch.nn.functional.cosine_similarity(embed(result.image.clamp(-1, 1)), hr_embedding, dim=1)
        picked = [pool.identities[int(r)] if int(r) >= 0 else None for r in result.reference]
        out[variant] = {
            f"identity_{settings['identity_network']}": float(identity.mean()),
            "lr_error": float(result.lr_error.mean()),
            "hr_mse": float((result.image.clamp(-1, 1) - x).pow(2).mean()),
            "reference_correct": float(np.mean([a == b for a, b in zip(picked, truth)])) if picked[0] else -1.0,
            "terms": parsed.terms(),
        }
    return out


SAIR_LATENT = Stage(
    name="sair_latent",
    fn=sair_latent,
    params=SairLatentParams,
    inputs=("generator", "references", "attributes", "embedder"),
    optional_inputs=("embedder",),
    outputs=("checkpoint", "codes", "pool"),
    description="SAIR on a StyleGAN2 prior: references and attribute faces inverted into W+ in batched Ray tasks, "
                "the reference pool (output pool, for fsr restore --references), expression directions by linear "
                "classifiers, the ablation of every term logged, and a checkpoint exporting the restorers sair and "
                "sair_wrong_reference",
    held_cpus=lambda params: params.task_cpus,
)
