"""Video chunks of an archive restoration, chained: each chunk's ordered pass after its predecessor's.

Used by :func:`pipelines.archive_restore.restore_archive`: rows of a video chunk arrive from the Ray
Data pipeline in no order; what needs the frames in order (tracking across chunks, temporal
smoothing, paste-back and encoding) runs as one Ray task per chunk, chunk ``k + 1`` getting the
state after chunk ``k`` (:func:`~fsr_core.restore.video_chunks.finish_video_chunk`).
"""

from __future__ import annotations

from typing import Any, Mapping

from fsr_core.restore.archive import ArchiveSettings

__all__ = ["VideoChains"]


class VideoChains:
    """Runs :func:`~fsr_core.restore.video_chunks.finish_video_chunk` as Ray tasks, chunk after chunk.

    Chunk ``k``'s task gets the state after chunk ``k - 1`` as an object ref (Ray starts it once
    that task is done), or loads it from ``_work/state/`` when chunk ``k - 1`` finished in an
    earlier run; a chunk whose predecessor has not been submitted yet waits here.
    """

    def __init__(self, out: str, done_units: frozenset[int], *, settings: ArchiveSettings, paste: bool,
                 write_video: bool, feather: float, num_cpus: float) -> None:
        import ray

        self.out, self.done_units = out, done_units
        self.kwargs = {"settings": settings, "paste": paste, "write_video": write_video, "feather": feather}
        self.remote = ray.remote(_finish_chunk_task).options(num_cpus=num_cpus, num_returns=2)
        self.states: dict[int, Any] = {}  # unit -> ref of the state after it
        self.running: dict[Any, int] = {}  # ref of the rows -> unit
        self.items: dict[int, dict] = {}  # unit -> its plan item, while its task runs
        self.waiting: dict[int, tuple] = {}  # unit -> submit() arguments

    def submit(self, unit: int, rows: list, sampled: list[int], fps: float, model: Mapping[str, Any],
               item: dict) -> None:
        """Start the chunk's task, or park it until its predecessor has started; then start the parked
        successors that were waiting for it (a loop: a video may have thousands of chunks)."""
        todo = [(unit, (rows, sampled, fps, model, item))]
        while todo:
            unit, args = todo.pop()
            if self._launch(unit, *args) and unit + 1 in self.waiting:
                todo.append((unit + 1, self.waiting.pop(unit + 1)))

    def _launch(self, unit: int, rows: list, sampled: list[int], fps: float, model: Mapping[str, Any],
                item: dict) -> bool:
        chunk = int(item.get("chunk", 0))
        if chunk == 0:
            previous: Any = None
        elif unit - 1 in self.states:
            previous = self.states[unit - 1]
        elif unit - 1 in self.done_units:
            previous = "load"
        else:
            self.waiting[unit] = (rows, sampled, fps, model, item)
            return False
        common = {"unit": unit, "source_uri": item["uri"], "relative_path": item["relative"], "media": "video",
                  "model_name": model["name"], "model_version": model["version"], "model_uri": model["uri"]}
        rows_ref, state_ref = self.remote.remote(rows, item, sampled, previous, out=self.out, fps=item.get("fps") or fps,
                                                 common=common, **self.kwargs)
        self.states[unit] = state_ref
        self.running[rows_ref] = unit
        self.items[unit] = item
        return True

    def poll(self, *, timeout: float | None) -> list[tuple[int, list]]:
        """Finished chunks as ``(unit, rows)`` in unit order, ``rows`` the exception where the chunk's task
        failed; ``timeout=None`` waits for all of them."""
        import ray

        if not self.running:
            return []
        refs = list(self.running)
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        finished = []
        for ref in ready:
            unit = self.running.pop(ref)
            try:
                finished.append((unit, ray.get(ref)))
            except Exception as exc:  # noqa: BLE001 - the chunk failed (its successors fail with it)
                finished.append((unit, exc))
        finished.sort(key=lambda pair: pair[0])
        for unit, _ in finished:
            self.states.pop(unit - 1, None)  # its successor has it
            item = self.items.pop(unit)
            if int(item.get("chunk", 0)) == int(item.get("chunks", 1)) - 1:
                self.states.pop(unit, None)  # a video's last chunk: no successor
        return finished


def _finish_chunk_task(rows: list, item: dict, sampled: list[int], previous: Any, *, out: str, fps: float,
                       common: dict, settings: ArchiveSettings, paste: bool, write_video: bool,
                       feather: float) -> tuple[list, Any]:
    from fsr_core.restore.video_chunks import finish_video_chunk, load_chunk_state, save_chunk_state

    chunk, chunks = int(item.get("chunk", 0)), int(item.get("chunks", 1))
    if isinstance(previous, str):  # "load": the previous chunk finished in an earlier run
        previous = load_chunk_state(out, item["safe"], chunk - 1)
    if settings.sample_fps and fps:
        fps = min(settings.sample_fps, fps)
    rows, state = finish_video_chunk(rows, item, sampled, out=out, settings=settings, paste=paste,
                                     write_video=write_video, feather=feather, fps=fps or settings.sample_fps or 25.0,
                                     previous=previous, common=common)
    if chunk < chunks - 1:
        save_chunk_state(out, item["safe"], state)  # for a successor that runs in a later run
    return rows, state
