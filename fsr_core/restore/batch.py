"""Batch restoration with a restorer: uint8 face crops in, uint8 restored crops out.

Plain numpy functions, plus three callable classes for Ray Data ``map_batches`` (each loads its
restorer once per actor, or once per worker process when run as tasks):

- :class:`SuperResolver`: ``{"id", "image"}`` batches of LR crops -> restored crops;
- :class:`SuperResolutionScorer`: ``{"id", "image"}`` batches of HR crops (and ``lr``, their
  genuine LR, when paired) -> per-image PSNR/SSIM-Y of the restorer and of the bicubic baseline
  on that LR, by default on the bicubic downsampling of the HR;
- :class:`CriticalResolutionDescriber`: ``{"id", "image"}`` batches of HR crops -> identity
  descriptors of the ground truth and of the faces restored from each input size of the
  critical-resolution study (:func:`restore_from_size`).

Each passes a batch's per-face condition columns (``identity``: :data:`~fsr_core.restore.restorer.CONDITIONS`)
to the restorer, which reads those its card names.

:func:`map_restorer` puts such a class on a Ray Dataset the way the restorer's kind wants it:
feed-forward restorers in an actor pool (the networks loaded once per actor), latent-search
restorers as batched Ray tasks (each task runs one search over its batch of faces; the restorer is
loaded once per worker process).

Where models live is not this module's business: both classes take a *loader*, a callable
``loader(model, *, tracking_uri, device) -> (restorer, info)`` that returns a
:class:`~fsr_core.restore.restorer.Restorer` on ``device``, and hand it ``model`` untouched (a URI
string, ``bicubic``, or whatever resolved reference the loader understands). The pipelines pass
:func:`pipelines.model_registry.load_restorer` with a resolved ``ModelRef``; tests pass a function
that reads a bundle folder. A loader given to a Ray Data job must pickle by reference, i.e. be a
module-level function of an importable module.

Pixel conventions: see :mod:`fsr_core.restore.restorer`. Crops whose size differs from the
restorer's input size are resized with MATLAB bicubic :func:`~fsr_core.degradation.resize.imresize`
(uint8 in, uint8 out, as a saved LR file).
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Iterable, Mapping, Sequence
from urllib.parse import quote

import numpy as np

from fsr_core import storage
from fsr_core.data.codec import encode_png
from fsr_core.degradation.resize import imresize
from fsr_core.metrics.psnr_ssim import lr_consistency, psnr_y, ssim_y
from fsr_core.restore.restorer import CONDITIONS, Restorer, images_to_tensor, tensor_to_images

__all__ = [
    "CriticalResolutionDescriber",
    "RestorerLoader",
    "SuperResolutionScorer",
    "SuperResolver",
    "critical_column",
    "crop_filename",
    "degrade_bicubic",
    "images_to_tensor",
    "map_restorer",
    "resize_images",
    "restore_from_size",
    "score_super_resolution",
    "side_by_side",
    "tensor_to_images",
    "write_crops",
]

RestorerLoader = Callable[..., tuple[Restorer, Mapping[str, Any]]]
"""``loader(model, *, tracking_uri, device) -> (restorer on device, info dict)``."""

SCORE_COLUMNS = ("psnr_y", "ssim_y", "bicubic_psnr_y", "bicubic_ssim_y")
#: per-image PSNR-Y (dB) of the LR input against the restored / bicubic crop degraded back (always scored)
LR_CONSISTENCY_COLUMNS = ("lr_consistency_psnr_y", "bicubic_lr_consistency_psnr_y")
#: per-image identity similarity with the project's own face embedder (when a checkpoint is given)
EMBEDDER_COLUMNS = ("identity_sim_face_embedder", "bicubic_identity_sim_face_embedder")
#: per-image columns of the scorer's optional quality measures (``quality=True``)
IDENTITY_COLUMNS = ("identity_sim_dlib", "bicubic_identity_sim_dlib")
#: per-image BRISQUE (the authors' LIVE-trained model; lower is more natural) of the restored, bicubic
#: and ground-truth crops (``quality=True``)
BRISQUE_COLUMNS = ("brisque", "bicubic_brisque", "hr_brisque")
NIQE_COLUMNS = ("niqe_features", "bicubic_niqe_features", "hr_niqe_features")
#: per-image dlib descriptors (``[N,128]``) of the restored, bicubic and ground-truth crops
#: (``quality=True``), for the set-level identity metrics (Rank-1, Fréchet distance, KID)
DESCRIPTOR_COLUMNS = ("dlib_descriptor", "bicubic_dlib_descriptor", "hr_dlib_descriptor")
#: per-image LPIPS (AlexNet v0.1) of the restored and bicubic crops against the ground truth (``lpips_backbone``)
LPIPS_COLUMNS = ("lpips_alex", "bicubic_lpips_alex")
#: per-image pytorch-fid Inception pool3 features (``[N,2048]``) of the restored, bicubic and ground-truth
#: crops (``inception_weights``), for the set-level FID and KID
INCEPTION_COLUMNS = ("inception_features", "bicubic_inception_features", "hr_inception_features")


# ---------------------------------------------------------------------------- conversions
def _check_images(images: np.ndarray, *, name: str = "images") -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{name} must be uint8 [N,H,W,3] RGB, got {images.dtype} {images.shape}")
    return images


def resize_images(images: np.ndarray | Sequence[np.ndarray], size: int) -> np.ndarray:
    """Stack crops at ``size x size``: MATLAB bicubic for crops of another size, others untouched.

    ``images`` is a uint8 ``[N,H,W,3]`` array or a sequence (object array) of ``[H,W,3]`` crops of
    possibly different sizes (Ray Data's variable-shape tensors). Returns uint8 ``[N,size,size,3]``.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4:
        if images.shape[1:3] == (size, size):
            return _check_images(images)
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for index, image in enumerate(images):
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"crop {index} must be uint8 [H,W,3] RGB, got {image.dtype} {image.shape}")
        out[index] = image if image.shape[:2] == (size, size) else imresize(image, output_size=(size, size))
    return out


def degrade_bicubic(hr: np.ndarray, scale: int) -> np.ndarray:
    """The synthetic LR of an HR crop: MATLAB bicubic ``1/scale`` downsampling, uint8 out.

    ``hr``: uint8 ``[N,H,W,3]`` with H, W divisible by ``scale``; returns ``[N,H/scale,W/scale,3]``.
    """
    hr = _check_images(hr, name="hr")
    height, width = hr.shape[1:3]
    if scale < 1 or height % scale or width % scale:
        raise ValueError(f"HR size {height}x{width} is not divisible by scale {scale}")
    size = (height // scale, width // scale)
    out = np.empty((len(hr), *size, 3), dtype=np.uint8)
    for index, image in enumerate(hr):
        out[index] = imresize(image, output_size=size)
    return out


def side_by_side(*panels: np.ndarray, gap: int = 2) -> np.ndarray:
    """One uint8 ``[S, k*S + (k-1)*gap, 3]`` strip of ``k`` RGB panels, each scaled to the largest
    panel's height by pixel repetition (so LR pixels stay visible); white gaps between them."""
    if not panels:
        raise ValueError("side_by_side needs at least one panel")
    height = max(p.shape[0] for p in panels)
    row = []
    for panel in panels:
        panel = np.asarray(panel, dtype=np.uint8)
        factor = height // panel.shape[0]
        if factor * panel.shape[0] != height:
            raise ValueError(f"panel height {panel.shape[0]} does not divide {height}")
        row.append(np.repeat(np.repeat(panel, factor, axis=0), factor, axis=1))
        row.append(np.full((height, gap, 3), 255, np.uint8))
    return np.concatenate(row[:-1], axis=1)


def score_super_resolution(
    restorer: Restorer, hr: np.ndarray, *, scale: int, crop_border: int, batch_size: int = 64,
    lr: np.ndarray | Sequence[np.ndarray] | None = None, resize_output: bool = False,
    conditions: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Restore LR crops and measure against their HR crops: the given ``lr`` (genuine LR paired with
    its ground truth; crops of another size than HR / ``scale`` are brought to it with MATLAB
    bicubic), or by default the MATLAB bicubic downsampling of ``hr``.

    Returns ``lr``, ``bicubic`` (MATLAB bicubic upsampling of ``lr``, the baseline), ``sr``
    (all uint8 image stacks) and float64 ``[N]`` arrays ``psnr_y``, ``ssim_y``,
    ``bicubic_psnr_y``, ``bicubic_ssim_y`` (BasicSR conventions, ``crop_border`` pixels cut), and
    ``lr_consistency_psnr_y`` / ``bicubic_lr_consistency_psnr_y``: PSNR-Y of the LR crop against the
    SR / bicubic crop brought back to the LR size by MATLAB bicubic
    (:func:`~fsr_core.metrics.psnr_ssim.lr_consistency`, no border cut, capped at 100 dB).

    ``resize_output``: a restorer of another scale is scored at the HR size, as
    :func:`restore_from_size` and ``restore_faces`` use it: the LR brought to its card's input size
    and its output to the HR size with MATLAB bicubic (an x8 restorer on x4 pairs: 16 -> 128 -> 64
    px), so methods of different scales share one table; ``sr`` is then the resized output.

    ``conditions``: per-face values for a restorer whose card names conditions (``{"identity": [...]}``).
    """
    hr = _check_images(hr, name="hr")
    if lr is None:
        lr = degrade_bicubic(hr, scale)
    else:
        if len(lr) != len(hr):
            raise ValueError(f"{len(lr)} LR crops for {len(hr)} HR crops")
        if hr.shape[1] % scale:
            raise ValueError(f"HR size {hr.shape[1]} is not divisible by scale {scale}")
        lr = resize_images(lr, hr.shape[1] // scale)
    if resize_output and restorer.card.kind != "interpolation" and len(lr):
        sr = restorer.restore(resize_images(lr, restorer.card.input_size), batch_size=batch_size,
                              conditions=conditions)
        sr = resize_images(sr, hr.shape[1]) if sr.shape[1:3] != hr.shape[1:3] else sr
    else:
        sr = restorer.restore(lr, batch_size=batch_size, conditions=conditions)
    if sr.shape != hr.shape:
        raise ValueError(
            f"the restorer maps {lr.shape[1]}x{lr.shape[2]} to {sr.shape[1]}x{sr.shape[2]}, expected "
            f"{hr.shape[1]}x{hr.shape[2]} (scale {scale}): the restorer's scale and the evaluation's differ"
        )
    bicubic = np.stack([imresize(image, output_size=hr.shape[1:3]) for image in lr]) if len(lr) else hr[:0]
    out: dict[str, np.ndarray] = {"lr": lr, "bicubic": bicubic, "sr": sr}
    for prefix, images in (("", sr), ("bicubic_", bicubic)):
        pairs = list(zip(images, hr))
        out[f"{prefix}psnr_y"] = np.array([psnr_y(a, b, crop_border=crop_border) for a, b in pairs], np.float64)
        out[f"{prefix}ssim_y"] = np.array([ssim_y(a, b, crop_border=crop_border) for a, b in pairs], np.float64)
        out[f"{prefix}lr_consistency_psnr_y"] = lr_consistency(lr, images) if len(lr) else np.zeros(0)
    return out


def restore_from_size(restorer: Restorer, hr: np.ndarray, size: int, *, batch_size: int = 64,
                      conditions: Mapping[str, Any] | None = None) -> np.ndarray:
    """The critical-resolution study's restoration: each HR crop brought down to ``size`` px with
    MATLAB bicubic (uint8, as a saved LR file), then restored to the HR size.

    ``hr``: uint8 ``[N,S,S,3]``, ``1 <= size <= S``. The bicubic baseline (an ``interpolation``
    restorer) upsamples the ``size`` px LR straight to ``S`` (MATLAB bicubic). Any other restorer
    reads its card's input size only, so the LR is resized to ``card.input_size`` first (MATLAB
    bicubic: up from smaller inputs, down from larger ones, so a restorer never sees more than its
    input size holds), restored, and its output brought to ``S`` with MATLAB bicubic when
    ``card.output_size`` differs. Returns uint8 ``[N,S,S,3]``. ``conditions``: as
    :func:`score_super_resolution`'s.
    """
    hr = _check_images(hr, name="hr")
    side = hr.shape[1]
    if hr.shape[1] != hr.shape[2]:
        raise ValueError(f"expected square HR crops, got {hr.shape[1]}x{hr.shape[2]}")
    if not 1 <= size <= side:
        raise ValueError(f"input size {size} must be between 1 and the HR size {side}")
    lr = resize_images(hr, size)
    if restorer.card.kind == "interpolation":
        return resize_images(lr, side)
    sr = restorer.restore(resize_images(lr, restorer.card.input_size), batch_size=batch_size, conditions=conditions)
    return resize_images(sr, side)


# ---------------------------------------------------------------------------- output files
def crop_filename(face_id: str) -> str:
    """``<id>.png`` with anything outside ``[A-Za-z0-9_.~-]`` percent-escaped (ids never make paths)."""
    if not face_id:
        raise ValueError("empty face id")
    return quote(str(face_id), safe="") + ".png"


def write_crops(batch: Mapping[str, np.ndarray], *, folder: str) -> dict[str, np.ndarray]:
    """Batch function: write each ``image`` as ``<folder>/<id>.png`` (atomic, overwrites).

    Returns ``{"input_id", "output_uri"}``. The file name depends on the id only, so writing the
    same rows again replaces the files instead of adding new ones.
    """
    ids = [str(i) for i in batch["id"]]
    uris = []
    for face_id, image in zip(ids, batch["image"]):
        uri = storage.join(folder, crop_filename(face_id))
        storage.write_bytes(uri, encode_png(np.asarray(image, dtype=np.uint8)))
        uris.append(uri)
    return {"input_id": np.array(ids, dtype=object), "output_uri": np.array(uris, dtype=object)}


# ---------------------------------------------------------------------------- Ray Data callables
def batch_conditions(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The per-face condition columns (:data:`~fsr_core.restore.restorer.CONDITIONS`) a batch holds."""
    return {name: batch[name] for name in CONDITIONS if name in batch}


class _LoadsRestorer:
    """Loads the restorer once, at construction (once per Ray Data actor, or per task worker)."""

    def __init__(self, *, model_uri: Any, loader: RestorerLoader, tracking_uri: str | None, device: str) -> None:
        if not callable(loader):
            raise ValueError(f"loader must be callable, got {type(loader).__name__}")
        self.model_uri = model_uri
        self.device = device
        self.restorer, info = loader(model_uri, tracking_uri=tracking_uri, device=device)
        self.info = dict(info)
        self.scale = int(self.restorer.card.scale)


class SuperResolver(_LoadsRestorer):
    """Ray Data callable class: restore a batch of face crops.

    Batch in: ``image`` (uint8 ``[N,S,S,3]``, or an object array of ``[H,W,3]`` crops) and any
    other columns (passed through). Each crop is brought to ``input_size`` (default: the
    restorer's) with MATLAB bicubic when its size differs, then restored. Batch out: the same
    columns with ``image`` replaced by the restored uint8 ``[N,input_size*s,input_size*s,3]``.
    """

    def __init__(
        self,
        *,
        model_uri: Any,
        loader: RestorerLoader,
        tracking_uri: str | None = None,
        device: str = "cpu",
        input_size: int | None = None,
        batch_size: int = 64,
    ) -> None:
        if input_size is not None and input_size < 1:
            raise ValueError(f"input_size must be >= 1, got {input_size}")
        super().__init__(model_uri=model_uri, loader=loader, tracking_uri=tracking_uri, device=device)
        self.input_size = input_size or self.restorer.card.input_size
        self.batch_size = batch_size

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        lr = resize_images(batch["image"], self.input_size)
        out = {name: value for name, value in batch.items() if name != "image"}
        out["image"] = self.restorer.restore(lr, batch_size=self.batch_size, conditions=batch_conditions(batch))
        return out


class SuperResolutionScorer(_LoadsRestorer):
    """Ray Data callable class: score the restorer on a batch of HR crops (see
    :func:`score_super_resolution`).

    Batch in: ``id`` and ``image`` (uint8 ``[N,H,W,3]`` HR crops), and ``lr`` for paired genuine
    LR (without it, the bicubic downsampling of ``image``). Batch out: ``id``, the four
    float64 score columns and the two LR-consistency columns, and ``grid_png``: the PNG of an
    ``LR | bicubic | SR | HR`` strip for ids in ``grid_ids``, empty bytes for the others (so only
    the few shown images travel). With ``quality``: ``identity_sim_dlib`` and the NIQE features;
    with ``face_embedder`` (a ``face_embedder_train`` checkpoint): ``identity_sim_face_embedder``;
    with ``lpips_backbone`` (AlexNet's ImageNet weights; the heads of the lpips wheel):
    :data:`LPIPS_COLUMNS`; with ``inception_weights`` (pytorch-fid's
    ``pt_inception-2015-12-05-6726825d.pth``): :data:`INCEPTION_COLUMNS`. A weight file that is
    absent fails at construction, naming it.
    """

    def __init__(
        self,
        *,
        model_uri: Any,
        loader: RestorerLoader,
        tracking_uri: str | None = None,
        device: str = "cpu",
        scale: int,
        crop_border: int,
        grid_ids: Iterable[str] = (),
        batch_size: int = 64,
        quality: bool = False,
        template: str = "ffhq",
        face_embedder: str | None = None,
        lpips_backbone: str | None = None,
        inception_weights: str | None = None,
        resize_output: bool = False,
    ) -> None:
        super().__init__(model_uri=model_uri, loader=loader, tracking_uri=tracking_uri, device=device)
        self.quality, self.template = quality, template
        self.resize_output = resize_output
        self.lpips = self.inception = None
        if lpips_backbone:
            from fsr_core.metrics.lpips import load_lpips

            self.lpips = load_lpips(lpips_backbone).to(device)
        if inception_weights:
            from fsr_core.networks.inception_fid import load_fid_inception

            self.inception = load_fid_inception(inception_weights).to(device)
        if quality:  # dlib's descriptor for identity_sim_dlib (a missing weight file fails here, before work)
            from fsr_core.networks.dlib_resnet import load_dlib_face_descriptor

            self.descriptor = load_dlib_face_descriptor().to(device).eval()
            from fsr_core.metrics.brisque import load_brisque_model

            self.brisque_model = load_brisque_model()  # a missing model file fails here too, naming it
        self.embedder = None
        if face_embedder:  # the project's own embedder for identity_sim_face_embedder
            from fsr_core.metrics.face_embedding import load_metric_embedder

            self.embedder = load_metric_embedder(face_embedder, device=device)
        if self.scale != scale and not resize_output:
            name = self.info.get("model_uri", model_uri)
            raise ValueError(f"{name} upscales x{self.scale}, but the evaluation asks for x{scale} (resize_output "
                             "scores it at the evaluation's HR size)")
        self.scale_factor = scale
        self.crop_border = crop_border
        self.grid_ids = frozenset(str(i) for i in grid_ids)
        self.batch_size = batch_size

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        ids = [str(i) for i in batch["id"]]
        hr = _check_images(np.asarray(batch["image"]), name="hr")
        scores = score_super_resolution(
            self.restorer, hr, scale=self.scale_factor, crop_border=self.crop_border, batch_size=self.batch_size,
            lr=batch.get("lr"), resize_output=self.resize_output, conditions=batch_conditions(batch),
        )
        grid = [
            encode_png(side_by_side(scores["lr"][i], scores["bicubic"][i], scores["sr"][i], hr[i]))
            if face_id in self.grid_ids else b""
            for i, face_id in enumerate(ids)
        ]
        out: dict[str, Any] = {"id": np.array(ids, dtype=object)}
        out.update({name: scores[name] for name in (*SCORE_COLUMNS, *LR_CONSISTENCY_COLUMNS)})
        out["grid_png"] = np.array(grid, dtype=object)
        if self.quality:
            out.update(self._quality(hr, scores["sr"], scores["bicubic"]))
        if self.embedder is not None:
            from fsr_core.metrics.face_embedding import embedding_similarity

            for name, images in zip(EMBEDDER_COLUMNS, (scores["sr"], scores["bicubic"])):
                out[name] = embedding_similarity(self.embedder, images, hr, batch_size=self.batch_size)
        if self.lpips is not None:
            from fsr_core.metrics.lpips import lpips_distance

            for name, images in zip(LPIPS_COLUMNS, (scores["sr"], scores["bicubic"])):
                out[name] = lpips_distance(self.lpips, images, hr, batch_size=self.batch_size)
        if self.inception is not None:
            from fsr_core.metrics.inception import inception_features

            for name, images in zip(INCEPTION_COLUMNS, (scores["sr"], scores["bicubic"], hr)):
                out[name] = inception_features(self.inception, images, batch_size=self.batch_size)
        return out

    def _quality(self, hr: np.ndarray, sr: np.ndarray, bicubic: np.ndarray) -> dict[str, np.ndarray]:
        """``identity_sim_dlib`` of SR and bicubic against HR (and the dlib descriptors of all three),
        BRISQUE of SR, bicubic and HR, and the
        NIQE patch features of each image (``[N, 36 * patches]``, NaN when the crop is under 96 px)
        for a pooled NIQE."""
        from fsr_core.metrics.brisque import brisque
        from fsr_core.metrics.face_identity import chips_from_aligned, face_descriptors
        from fsr_core.metrics.identity import cosine_similarity
        from fsr_core.metrics.niqe import BLOCK, niqe_features

        described = {name: face_descriptors(self.descriptor, chips_from_aligned(images, template=self.template))
                     for name, images in zip(DESCRIPTOR_COLUMNS, (sr, bicubic, hr))}
        out = {"identity_sim_dlib": cosine_similarity(described["dlib_descriptor"], described["hr_dlib_descriptor"]),
               "bicubic_identity_sim_dlib": cosine_similarity(described["bicubic_dlib_descriptor"],
                                                              described["hr_dlib_descriptor"]),
               **described}
        for name, images in zip(BRISQUE_COLUMNS, (sr, bicubic, hr)):
            out[name] = np.array([brisque(image, self.brisque_model) for image in images], dtype=np.float64)
        patches = (hr.shape[1] // BLOCK) * (hr.shape[2] // BLOCK)
        for name, images in (("niqe_features", sr), ("bicubic_niqe_features", bicubic), ("hr_niqe_features", hr)):
            if patches:
                out[name] = np.stack([niqe_features(image)[0].ravel() for image in images])
            else:
                out[name] = np.full((len(images), 36), np.nan)
        return out


def critical_column(network: str, size: int | None) -> str:
    """The column of :class:`CriticalResolutionDescriber` holding ``network``'s descriptors of the
    faces restored from ``size`` px (``None``: of the ground truth)."""
    return f"{network}_truth" if size is None else f"{network}_from_{size}"


class CriticalResolutionDescriber(_LoadsRestorer):
    """Ray Data callable class: identity descriptors for the critical-resolution study.

    Batch in: ``id`` and ``image`` (uint8 ``[N,S,S,3]`` ground-truth crops aligned to
    ``template``). For each of ``sizes``, the restorer restores the crops from that input size
    (:func:`restore_from_size`). Batch out: ``id``, ``dlib_truth`` (``[N,128]`` dlib descriptors of
    the ground truth, chips cut as :mod:`fsr_core.metrics.face_identity` cuts them) and
    ``dlib_from_<size>`` for each size; with ``face_embedder`` (a ``face_embedder_train``
    checkpoint) ``face_embedder_truth`` and ``face_embedder_from_<size>`` too (unit embeddings).
    Matching them (:func:`fsr_core.metrics.identity.critical_resolution_curve`) needs the whole
    gallery, so it is the driver's job.
    """

    def __init__(
        self,
        *,
        model_uri: Any,
        loader: RestorerLoader,
        tracking_uri: str | None = None,
        device: str = "cpu",
        sizes: Sequence[int],
        batch_size: int = 64,
        template: str = "ffhq",
        face_embedder: str | None = None,
    ) -> None:
        if not sizes or any(int(s) < 1 for s in sizes):
            raise ValueError(f"sizes must be positive input sizes, got {list(sizes)}")
        super().__init__(model_uri=model_uri, loader=loader, tracking_uri=tracking_uri, device=device)
        from fsr_core.networks.dlib_resnet import load_dlib_face_descriptor

        self.descriptor = load_dlib_face_descriptor().to(device).eval()
        self.embedder = None
        if face_embedder:
            from fsr_core.metrics.face_embedding import load_metric_embedder

            self.embedder = load_metric_embedder(face_embedder, device=device)
        self.sizes = sorted({int(s) for s in sizes})
        self.batch_size, self.template = batch_size, template

    def _describe(self, crops: np.ndarray, size: int | None) -> dict[str, np.ndarray]:
        from fsr_core.metrics.face_embedding import face_embeddings
        from fsr_core.metrics.face_identity import chips_from_aligned, face_descriptors

        chips = chips_from_aligned(crops, template=self.template)
        out = {critical_column("dlib", size): face_descriptors(self.descriptor, chips, batch_size=self.batch_size)}
        if self.embedder is not None:
            out[critical_column("face_embedder", size)] = face_embeddings(self.embedder, crops,
                                                                          batch_size=self.batch_size)
        return out

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        hr = _check_images(np.asarray(batch["image"]), name="hr")
        out: dict[str, Any] = {"id": np.array([str(i) for i in batch["id"]], dtype=object)}
        out.update(self._describe(hr, None))
        for size in self.sizes:
            out.update(self._describe(restore_from_size(self.restorer, hr, size, batch_size=self.batch_size,
                                                        conditions=batch_conditions(batch)), size))
        return out


_TASK_INSTANCES: dict[str, Any] = {}


def _instance_key(fn_cls: type, fn_kwargs: Mapping[str, Any]) -> str:
    import cloudpickle

    return hashlib.sha256(cloudpickle.dumps((fn_cls, sorted(fn_kwargs.items())))).hexdigest()


def _call_in_task(batch: Mapping[str, Any], *, fn_cls: type, fn_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Task body of :func:`map_restorer` for latent-search restorers: one ``fn_cls`` instance per
    worker process (and per set of arguments), reused by the tasks that process runs."""
    key = _instance_key(fn_cls, fn_kwargs)
    if key not in _TASK_INSTANCES:
        _TASK_INSTANCES.clear()  # one restorer per worker process at a time
        _TASK_INSTANCES[key] = fn_cls(**fn_kwargs)
    return _TASK_INSTANCES[key](batch)


def map_restorer(ds, fn_cls: type, *, fn_kwargs: Mapping[str, Any], kind: str, batch_size: int, num_actors: int = 1,
                 num_cpus: float = 0.5, use_gpu: bool = False):
    """``ds.map_batches`` of a restorer callable class, the way restorers of ``kind`` run: an actor
    pool of ``num_actors`` for ``feed_forward`` and ``interpolation``, batched tasks (one search
    per batch) for ``latent_search``; ``num_cpus`` (and one GPU with ``use_gpu``) each."""
    import ray

    common = {"num_cpus": num_cpus, "num_gpus": 1 if use_gpu else 0, "batch_size": batch_size,
              "batch_format": "numpy"}
    if kind == "latent_search":
        return ds.map_batches(_call_in_task, fn_kwargs={"fn_cls": fn_cls, "fn_kwargs": dict(fn_kwargs)}, **common)
    return ds.map_batches(fn_cls, fn_constructor_kwargs=dict(fn_kwargs),
                          compute=ray.data.ActorPoolStrategy(size=num_actors), **common)
