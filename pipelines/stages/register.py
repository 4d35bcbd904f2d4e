"""``register_model``: put a restorer of a checkpoint into the MLflow Model Registry.

Input ``checkpoint`` (a checkpoint folder, local or ``s3://``, whose objective exports restorers);
output ``model``, the concrete ``models:/NAME/VERSION`` that restoration and evaluation stages read.
What is registered is a restorer bundle (:mod:`fsr_core.restore.restorer`): the networks the
restorer runs, their weights and a card saying how to run it. Being its own stage, the
registration is cached like any other: re-running a finished pipeline does not add versions, and
a new checkpoint (a new fingerprint) gives exactly one new version, with the alias moved to it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipelines.stage import Stage, StageContext, StageParams

__all__ = ["REGISTER_MODEL", "RegisterModelParams"]


class RegisterModelParams(StageParams):
    restorer: str = Field(..., min_length=1, description="a restorer the checkpoint exports (its restorers.json)")
    registered_name: str = Field(..., min_length=1, description="MLflow registered model name")
    alias: str | None = Field("challenger", description="alias moved to the new version (challenger, champion)")
    ema: bool = Field(False, description="register the EMA weights (weights/<network>.ema.pt)")
    alignment: str = Field("ffhq", description="the alignment template the restorer's inputs follow (card)")
    grey_inputs: Literal["grey", "colour"] = Field(
        "grey", description="grey input crops come back grey (grey) or as the networks make them (colour)")


def register_model(ctx: StageContext, checkpoint: str) -> dict[str, str]:
    from pipelines.model_registry import register_restorer

    p: RegisterModelParams = ctx.params  # type: ignore[assignment]
    if ctx.run_id is None or ctx.tracking_uri is None:
        raise ValueError(f"stage {ctx.stage!r}: registering needs an MLflow run (run it through the runner)")
    uri = register_restorer(
        checkpoint_dir=checkpoint,
        restorer=p.restorer,
        registered_name=p.registered_name,
        alias=p.alias,
        tracking_uri=ctx.tracking_uri,
        run_id=ctx.run_id,
        ema=p.ema,
        alignment=p.alignment,
        grey_inputs=p.grey_inputs,
    )
    ctx.set_tags({"fsr_model_uri": uri})
    return {"model": uri}


REGISTER_MODEL = Stage(
    name="register_model",
    fn=register_model,
    params=RegisterModelParams,
    inputs=("checkpoint",),
    outputs=("model",),
    description="Register a restorer of a checkpoint in the MLflow Model Registry (card + networks + weights, "
                "no pickled code) and move an alias",
)
