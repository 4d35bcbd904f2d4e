"""``register_model``: put one network of a checkpoint into the MLflow Model Registry.

Input ``checkpoint`` (a checkpoint folder, local or ``s3://``); output ``model``, the concrete
``models:/NAME/VERSION`` that restoration and evaluation stages read. Being its own stage, the
registration is cached like any other: re-running a finished pipeline does not add versions, and
a new checkpoint (a new fingerprint) gives exactly one new version, with the alias moved to it.
"""

from __future__ import annotations

from pydantic import Field

from pipelines.stage import Stage, StageContext, StageParams

__all__ = ["REGISTER_MODEL", "RegisterModelParams"]


class RegisterModelParams(StageParams):
    network: str = Field("l2h", description="name of the network inside the checkpoint (networks.json)")
    registered_name: str = Field(..., min_length=1, description="MLflow registered model name")
    alias: str | None = Field("challenger", description="alias moved to the new version (challenger, champion)")
    ema: bool = Field(False, description="register the EMA weights (weights/<network>.ema.pt)")


def register_model(ctx: StageContext, checkpoint: str) -> dict[str, str]:
    from pipelines.model_registry import register_network

    p: RegisterModelParams = ctx.params  # type: ignore[assignment]
    if ctx.run_id is None or ctx.tracking_uri is None:
        raise ValueError(f"stage {ctx.stage!r}: registering needs an MLflow run (run it through the runner)")
    uri = register_network(
        checkpoint_dir=checkpoint,
        network=p.network,
        registered_name=p.registered_name,
        alias=p.alias,
        tracking_uri=ctx.tracking_uri,
        run_id=ctx.run_id,
        ema=p.ema,
    )
    ctx.set_tags({"fsr_model_uri": uri})
    return {"model": uri}


REGISTER_MODEL = Stage(
    name="register_model",
    fn=register_model,
    params=RegisterModelParams,
    inputs=("checkpoint",),
    outputs=("model",),
    description="Register a checkpoint's network in the MLflow Model Registry (pyfunc: weights + constructor JSON) and move an alias",
)
