"""The stage kinds a pipeline's ``uses:`` can name: one explicit dict, no folder scanning."""

from __future__ import annotations

from pipelines.stage import Stage
from pipelines.stages.ingest_demo import LFW_FACES, SYNTHETIC_FACES

STAGES: dict[str, Stage] = {stage.name: stage for stage in (SYNTHETIC_FACES, LFW_FACES)}

__all__ = ["STAGES"]
