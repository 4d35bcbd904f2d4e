"""Stage kinds that fail the way real stages do, inside Ray Data and inside Ray Train (a plugin
module: ``FSR_PLUGINS=tests.pipelines.failing_stages``)."""

from __future__ import annotations

from pipelines.stage import Stage, StageContext, StageParams


class FailParams(StageParams):
    rows: int = 4


def _decode(row):
    if row["id"] == 2:
        raise ValueError("shard part-00002.parquet: row 2 is not a PNG")
    return row


def fail_in_ray_data(ctx: StageContext) -> dict[str, str]:
    """A Ray Data map whose function raises on one row (Ray wraps it in UserCodeException)."""
    import ray

    ray.data.range(ctx.params.rows).map(_decode, num_cpus=0.25).take_all()
    return {"data": ctx.outputs["data"]}


def _loop(config):
    raise KeyError("objective state has no 'centres'")


def fail_in_ray_train(ctx: StageContext) -> dict[str, str]:
    """A Ray Train fit whose worker raises (Ray Train wraps it in WorkerGroupError)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    TorchTrainer(_loop, scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.25}),
                 run_config=RunConfig(name="fail", storage_path=ctx.outputs["data"],
                                      failure_config=FailureConfig(max_failures=0))).fit()
    return {"data": ctx.outputs["data"]}


STAGES = {
    stage.name: stage for stage in (
        Stage("fail_in_ray_data", fail_in_ray_data, FailParams, inputs=(), outputs=("data",), description="fails"),
        Stage("fail_in_ray_train", fail_in_ray_train, FailParams, inputs=(), outputs=("data",), description="fails"),
    )
}
