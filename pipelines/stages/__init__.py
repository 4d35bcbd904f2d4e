"""The stage kinds a pipeline's ``uses:`` can name: one explicit dict, no folder scanning.

This is one of the project's *lists*: ``__fsr_registry__`` tells the stage fingerprints to leave
it out, so adding a stage kind or a method re-runs no cached stage (:mod:`pipelines.fingerprint`).
Stage kinds from outside the package come from :mod:`fsr_core.plugins` (``FSR_PLUGINS``):
:func:`stage_kinds` merges them.
"""

from __future__ import annotations

from pipelines.stage import Stage
from pipelines.stages.compare import COMPARE_RESTORERS
from pipelines.stages.cr import CR_INVERSE, CR_JOINT, CR_JOINT_DLIB, CR_REGULARISER, CR_SR_PRETRAIN
from pipelines.stages.degrade import DEGRADE
from pipelines.stages.evaluate import EVALUATE_SR
from pipelines.stages.face_embedder import FACE_EMBEDDER_TRAIN
from pipelines.stages.ingest import INGEST_STAGES
from pipelines.stages.ingest_demo import LFW_FACES, SYNTHETIC_FACES
from pipelines.stages.promote import PROMOTE_MODEL
from pipelines.stages.register import REGISTER_MODEL
from pipelines.stages.restore import RESTORE_FACES
from pipelines.stages.sair import SAIR_LATENT
from pipelines.stages.selfsr import SELFSR_DEGRADATION, SELFSR_SR_PAIRED, SELFSR_SR_PSEUDO_PAIRS, SELFSR_SR_UNPAIRED
from pipelines.stages.stylegan2 import STYLEGAN2_PRIOR
from pipelines.stages.two_step import TWO_STEP_JOINT, TWO_STEP_PRETRAIN
from pipelines.stages.two_step_latent import TWO_STEP_LATENT

__fsr_registry__ = True

STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        SYNTHETIC_FACES,
        LFW_FACES,
        *INGEST_STAGES.values(),
        DEGRADE,
        TWO_STEP_PRETRAIN,
        TWO_STEP_JOINT,
        FACE_EMBEDDER_TRAIN,
        SELFSR_DEGRADATION,
        SELFSR_SR_PSEUDO_PAIRS,
        SELFSR_SR_PAIRED,
        SELFSR_SR_UNPAIRED,
        CR_SR_PRETRAIN,
        CR_REGULARISER,
        CR_INVERSE,
        CR_JOINT,
        CR_JOINT_DLIB,
        STYLEGAN2_PRIOR,
        TWO_STEP_LATENT,
        SAIR_LATENT,
        REGISTER_MODEL,
        RESTORE_FACES,
        COMPARE_RESTORERS,
        EVALUATE_SR,
        PROMOTE_MODEL,
    )
}


def stage_kinds() -> dict[str, Stage]:
    """:data:`STAGES` plus the stage kinds of the ``FSR_PLUGINS`` modules."""
    from fsr_core.plugins import merged

    return merged("STAGES", STAGES)


__all__ = ["STAGES", "stage_kinds"]
