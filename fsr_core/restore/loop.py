"""The plain way to restore an archive's images: one process, one file after another.

:func:`restore_loop` is the reference the Ray Data job (:mod:`pipelines.archive_restore`) is
measured and checked against: the same reading, decoding, detection and alignment
(:func:`~fsr_core.restore.archive.iter_file_records`), the same restorer, the same LR-consistency
score and the same writer (:func:`~fsr_core.restore.archive.write_restored`), so for the same
inputs the two write the same bytes (``tests/pipelines/test_restore_loop.py``) and
``bench/restore_throughput.py`` compares their speed and per-step CPU on equal work. It has none
of the job's resume, quarantine records or manifest: images only (videos are skipped).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from fsr_core.metrics.psnr_ssim import lr_consistency
from fsr_core.restore.archive import ArchiveSettings, FrameRecord, iter_file_records, write_restored
from fsr_core.restore.costs import NULL_CLOCK, StepClock

__all__ = ["restore_loop"]


def restore_loop(items: Iterable[Mapping[str, Any]], out: str, restorer, *, settings: ArchiveSettings,
                 paste: bool = True, feather: float = 0.1, faces_per_forward: int | None = 1,
                 clock: StepClock = NULL_CLOCK) -> dict[str, Any]:
    """Restore every face of ``items`` (``{uri, media, safe}``, as :func:`pipelines.archive_plan.list_archive`
    gives them) into ``out``, file after file.

    ``faces_per_forward``: 1 runs the network once per face (the plain loop), None once per image
    (all its faces together). Returns ``{"images", "faces", "lr_consistency": [per face]}``.
    """
    images = faces = 0
    consistency: list[float] = []
    scale = int(restorer.card.scale)
    for item in items:
        if item.get("media") != "image" or "quarantine" in item:
            continue
        for record in iter_file_records(item["uri"], "image", settings, clock=clock):
            if not isinstance(record, FrameRecord):
                continue
            images += 1
            crops = np.asarray(record.crops)
            step = len(crops) if faces_per_forward is None else faces_per_forward
            with clock("forward"):
                restored = np.concatenate([restorer.restore(crops[k:k + step], batch_size=step)
                                           for k in range(0, len(crops), max(step, 1))])
            with clock("consistency"):
                consistency.extend(float(v) for v in lr_consistency(crops, restored))
            write_restored(out, item["safe"], None, restored, record.faces, scale=scale,
                           frame=record.rgb if paste else None, feather=feather, clock=clock)
            faces += len(crops)
    return {"images": images, "faces": faces, "lr_consistency": consistency}
