"""The row functions of ``fsr restore`` (:mod:`pipelines.archive_restore`), run inside Ray Data tasks and actors.

:func:`detect_unit` (read -> decode -> detect -> align, a unit's rows), :class:`ArchiveRestorer` (the
model on a batch of those rows), :func:`write_outputs` (crops and pasted-back frames written, manifest
rows returned) and :func:`restore_unit` (the three in one task: the fused execution). The driver, the
plan, the manifest parts and the module's full picture live in :mod:`pipelines.archive_restore`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from fsr_core.metrics.psnr_ssim import lr_consistency
from fsr_core.restore.archive import ArchiveSettings, FrameRecord, Quarantine, iter_file_records, write_restored
from fsr_core.restore.costs import StepClock, merge_costs

__all__ = ["FAIL_ENV", "ArchiveRestorer", "detect_unit", "restore_unit", "write_outputs"]

#: test-only: ``name=N,...``: the first N attempts at a file whose relative path ends with ``name`` raise
FAIL_ENV = "FSR_TEST_FAIL_FILES"


def _injected_failure(item: Mapping[str, Any], attempt: int) -> None:
    for spec in filter(None, os.environ.get(FAIL_ENV, "").split(",")):
        name, _, times = spec.partition("=")
        if str(item.get("relative", "")).endswith(name) and attempt <= int(times or 1):
            raise RuntimeError(f"injected failure {attempt} ({FAIL_ENV})")

def _row(unit: int, kind: str, item: Mapping[str, Any], **values: Any) -> dict[str, Any]:
    row = {"unit": unit, "kind": kind, "source_uri": item.get("uri", ""), "relative": item.get("relative", ""),
           "safe": item.get("safe", ""), "media": item.get("media", ""), "frame_index": -1, "faces_json": "[]",
           "crops": b"", "frame": b"", "height": 0, "width": 0, "reason": "", "detail": "", "count": 0,
           "fps": 0.0, "sampled_json": "[]", "item_json": "", "detected_on": "", "costs_json": "{}"}
    row.update(values)
    return row


def detect_unit(row: Mapping[str, Any], *, settings: ArchiveSettings, keep_frames: bool) -> Iterator[dict[str, Any]]:
    """Ray Data ``flat_map``: the rows of one unit (see the module docstring), streamed.

    Video chunks: only frames with faces become rows (the ordered pass re-decodes the chunk); the
    end row lists every sampled frame index (``sampled_json``) and the stream's rate (``fps``). A
    file-level quarantine of a chunk after the first carries the chunk's first frame index, so each
    chunk's record has a key of its own."""
    unit = int(row["unit"])
    state = {"count": 0, "sampled": [], "fps": 0.0}
    clock = StepClock()
    for item in json.loads(row["items"]):
        saved = {**state, "sampled": list(state["sampled"])}
        for attempt in (1, 2):  # an unforeseen error: the file once more, then the unit is failed
            emitted = 0
            state.update(saved, sampled=list(saved["sampled"]))
            try:
                _injected_failure(item, attempt)
                for out in _item_rows(unit, item, state, settings=settings, keep_frames=keep_frames, clock=clock):
                    emitted += 1
                    yield out
                break
            except Exception as exc:  # noqa: BLE001 - any error of one unit must not stop the others
                if emitted or attempt == 2:
                    error = f"{item.get('relative', '?')!r}: {type(exc).__name__}: {exc}"[:2000]
                    yield _row(unit, "failed", item, detail=error)
                    return  # no end row: the driver records the unit as failed, a re-run retries it
    items = json.loads(row["items"])
    video_item = items[0] if len(items) == 1 and items[0]["media"] == "video" and "quarantine" not in items[0] else None
    yield _row(unit, "end", {}, count=state["count"], sampled_json=json.dumps(state["sampled"]), fps=state["fps"],
               item_json=json.dumps(video_item) if video_item else "", costs_json=clock.to_json())


def _item_rows(unit: int, item: Mapping[str, Any], state: dict[str, Any], *, settings: ArchiveSettings,
               keep_frames: bool, clock: StepClock) -> Iterator[dict[str, Any]]:
    """The rows of one file of a unit (:func:`detect_unit`); ``state`` carries the unit's row count,
    a video's sampled frame indices and rate; ``clock`` the unit's step costs."""
    if "quarantine" in item:
        state["count"] += 1
        yield _row(unit, "quarantine", item, reason=item["quarantine"][0], detail=item["quarantine"][1])
        return
    video = item["media"] == "video"
    chosen = dataclasses.replace(settings, keep_faceless_frames=True) if video else settings
    for record in iter_file_records(item["uri"], item["media"], chosen, start_s=item.get("start_s"),
                                    end_s=item.get("end_s"), report_no_face=not video, clock=clock):
        if isinstance(record, Quarantine):
            state["count"] += 1
            frame_index = record.frame_index
            if item.get("chunk"):  # at least the chunk's first frame: a key of its own per chunk
                frame_index = max(int(item["first_frame"]), -1 if frame_index is None else int(frame_index))
            yield _row(unit, "quarantine", item, reason=record.reason, detail=record.detail,
                       frame_index=-1 if frame_index is None else int(frame_index))
            continue
        assert isinstance(record, FrameRecord)
        if video and item.get("end_frame") is not None and record.frame_index >= item["end_frame"]:
            state["count"] += 1  # a variable-rate video the header did not reveal: indices would overlap the next chunk's
            yield _row(unit, "quarantine", item, reason="variable_frame_rate", frame_index=int(record.frame_index),
                       detail=f"frame index {record.frame_index} at {record.time_s:.3f} s reaches the next chunk's "
                              f"first frame {item['end_frame']}; the rest of this chunk is not restored: restore "
                              "this video with --chunk-seconds 0")
            return
        if video:
            state["sampled"].append(int(record.frame_index))
            state["fps"] = state["fps"] or float(record.fps or 0.0)
            if not record.faces:
                continue
        state["count"] += 1
        height, width = record.rgb.shape[:2]
        yield _row(unit, "frame", item,
                   frame_index=-1 if record.frame_index is None else int(record.frame_index),
                   faces_json=json.dumps([dataclasses.asdict(f) for f in record.faces]),
                   crops=np.ascontiguousarray(record.crops).tobytes(),
                   frame=np.ascontiguousarray(record.rgb).tobytes() if keep_frames and not video else b"",
                   height=height, width=width, detected_on=_node_id())


class ArchiveRestorer:
    """Ray Data callable class (one per actor, or per task worker): restore every face crop of a
    batch of frame rows at once.

    Adds ``restored`` (raw uint8 ``[k,S*s,S*s,3]`` bytes per row), ``scale`` and
    ``consistency_json`` (each face's :func:`~fsr_core.metrics.psnr_ssim.lr_consistency`), and the
    forward and consistency CPU seconds to the first row's ``costs_json``; other rows pass through.
    """

    def __init__(self, *, model_ref: Any, loader: Callable, device: str = "cpu", input_size: int,
                 batch_size: int = 64) -> None:
        self.restorer, info = loader(model_ref, device=device)
        self.scale = int(self.restorer.card.scale)
        self.node = _node_id()
        self.size = int(input_size)
        self.batch_size = batch_size

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, Any]:
        s = self.size
        counts, crops = [], []
        for data in batch["crops"]:
            lr = np.frombuffer(data, np.uint8).reshape(-1, s, s, 3) if len(data) else np.zeros((0, s, s, 3), np.uint8)
            counts.append(len(lr))
            crops.append(lr)
        lr = np.concatenate(crops) if crops else np.zeros((0, s, s, 3), np.uint8)
        clock = StepClock()
        with clock("forward"):
            sr = self.restorer.restore(lr, batch_size=self.batch_size) if len(lr) else lr
        with clock("consistency"):
            consistency = lr_consistency(lr, sr) if len(lr) else np.zeros(0)
        out = dict(batch)
        if len(counts):  # the batch's costs ride on its first row
            costs = np.array(batch["costs_json"], dtype=object)
            costs[0] = merge_costs(str(costs[0]), clock.to_json())
            out["costs_json"] = costs
        restored, scores, start = [], [], 0
        for n in counts:
            restored.append(np.ascontiguousarray(sr[start:start + n]).tobytes())
            scores.append(json.dumps([round(float(v), 4) for v in consistency[start:start + n]]))
            start += n
        out["restored"] = np.array(restored, dtype=object)
        out["consistency_json"] = np.array(scores, dtype=object)
        out["scale"] = np.full(len(counts), self.scale, np.int64)
        out["restored_on"] = np.full(len(counts), self.node, dtype=object)
        return out


_TASK_RESTORERS: dict[tuple, ArchiveRestorer] = {}


def restore_unit(row: Mapping[str, Any], *, detect: Mapping[str, Any], restorer: Mapping[str, Any],
                 write: Mapping[str, Any], frames_per_batch: int) -> Iterator[dict[str, Any]]:
    """Ray Data ``flat_map`` of the fused execution: one task does a whole unit, :func:`detect_unit`,
    then :class:`ArchiveRestorer` on ``frames_per_batch`` rows at a time, then :func:`write_outputs`,
    and yields the rows :func:`write_outputs` returns (what the staged execution's last step gives
    the driver), so crops and frames never leave the process. The restorer is loaded once per
    worker process (kept for the next unit; keyed by the model version and settings).
    ``detect``/``restorer``/``write``: those functions' keyword arguments."""
    key = (getattr(restorer["model_ref"], "uri", repr(restorer["model_ref"])), restorer["device"],
           restorer["input_size"], restorer["batch_size"], restorer["loader"])
    model = _TASK_RESTORERS.get(key)
    clock = StepClock()
    if model is None:
        _TASK_RESTORERS.clear()  # one model per process
        with clock("load"):
            model = _TASK_RESTORERS[key] = ArchiveRestorer(**restorer)
            detect["settings"].face_detector()
    pending: list[dict[str, Any]] = []

    def flush() -> Iterator[dict[str, Any]]:
        batch = {name: np.array([r[name] for r in pending], dtype=object) for name in pending[0]}
        batch["costs_json"][0] = merge_costs(str(batch["costs_json"][0]), clock.take())
        pending.clear()
        out = write_outputs(model(batch), **write)
        for i in range(len(out["unit"])):  # write_outputs' columns as rows, Python values
            yield {name: values[i].item() if isinstance(values[i], np.generic) else values[i]
                   for name, values in out.items()}

    for detected in detect_unit(row, **detect):
        pending.append(detected)
        if len(pending) >= frames_per_batch:
            yield from flush()
    if pending:
        yield from flush()


def _node_id() -> str:
    """The Ray node this process runs on ("" outside Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def write_outputs(batch: Mapping[str, np.ndarray], *, out: str, model: Mapping[str, Any], input_size: int,
                  paste: bool, feather: float) -> dict[str, Any]:
    """Ray Data batch function: write each frame row's crops (and, for images, the pasted-back frame);
    return manifest rows. Video frames are pasted in the ordered pass
    (:func:`~fsr_core.restore.video_chunks.finish_video_chunk`).

    Returns ``unit``, ``kind``, ``manifest_json`` (JSON list of manifest rows), ``count``, ``fps``,
    ``sampled_json``, ``item_json`` and ``costs_json`` (the row's step CPU seconds so far, paste,
    encode and write added) per input row.
    """
    units, kinds, manifests, counts, costs = [], [], [], [], []
    clock = StepClock()
    base = {"model_name": model["name"], "model_version": model["version"], "model_uri": model["uri"]}
    for i in range(len(batch["unit"])):
        kind = str(batch["kind"][i])
        rows: list[dict[str, Any]] = []
        common = {"unit": int(batch["unit"][i]), "source_uri": str(batch["source_uri"][i]),
                  "relative_path": str(batch["relative"][i]), "media": str(batch["media"][i]),
                  "frame_index": None if int(batch["frame_index"][i]) < 0 else int(batch["frame_index"][i]), **base}
        if kind == "quarantine":
            rows.append({**common, "status": "quarantined", "reason": str(batch["reason"][i]),
                         "detail": str(batch["detail"][i])})
        elif kind == "failed":
            rows.append({"error": str(batch["detail"][i])})
        elif kind == "frame":
            faces = json.loads(str(batch["faces_json"][i]))
            scale = int(batch["scale"][i])
            side = input_size * scale
            data = batch["restored"][i]
            restored = (np.frombuffer(data, np.uint8).reshape(-1, side, side, 3) if len(data)
                        else np.zeros((0, side, side, 3), np.uint8))
            consistency = json.loads(str(batch["consistency_json"][i]))
            frame = None
            if paste and len(batch["frame"][i]):
                frame = np.frombuffer(batch["frame"][i], np.uint8).reshape(int(batch["height"][i]),
                                                                          int(batch["width"][i]), 3)
            frame_uri, uris = write_restored(out, str(batch["safe"][i]), common["frame_index"], restored, faces,
                                             scale=scale, frame=frame, feather=feather, clock=clock)
            for face, uri, fidelity in zip(faces, uris, consistency):
                rows.append({**common, "face_index": face["index"], "track_id": face["track_id"], "box": face["box"],
                             "landmarks": face["landmarks"], "score": face["score"], "region": face["region"],
                             "matrix": face["matrix"], "output_uri": uri, "frame_output_uri": frame_uri,
                             "lr_consistency": fidelity, "status": "restored", "scale": scale,
                             "detected_on": str(batch["detected_on"][i]) or None,
                             "restored_on": (str(batch["restored_on"][i]) or None) if "restored_on" in batch else None})
        costs.append(merge_costs(str(batch["costs_json"][i]), clock.take()))
        units.append(int(batch["unit"][i]))
        kinds.append(kind)
        manifests.append(json.dumps(rows))
        counts.append(int(batch["count"][i]))
    return {"unit": np.array(units, np.int64), "kind": np.array(kinds, dtype=object),
            "manifest_json": np.array(manifests, dtype=object), "count": np.array(counts, np.int64),
            "fps": np.asarray(batch["fps"], np.float64), "sampled_json": np.asarray(batch["sampled_json"], dtype=object),
            "item_json": np.asarray(batch["item_json"], dtype=object), "costs_json": np.array(costs, dtype=object)}
