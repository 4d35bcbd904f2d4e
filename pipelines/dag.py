"""Pipeline validation: every input resolved, no cycles, a run order.

An input reference is either ``<stage>.<output>`` (an output of another stage
of the pipeline) or ``<catalog entry>`` (a name in ``conf/catalog.yaml``).
"""

from __future__ import annotations

from typing import Mapping

from pipelines.stage import Stage

__all__ = ["parse_reference", "validate_dag", "dependencies"]


def parse_reference(ref: str) -> tuple[str | None, str]:
    """``"ingest.faces"`` -> ``("ingest", "faces")``; ``"lfw"`` -> ``(None, "lfw")`` (catalog)."""
    if "." in ref:
        stage, output = ref.split(".", 1)
        return stage, output
    return None, ref


def dependencies(spec) -> dict[str, set[str]]:
    """Stage name -> names of the stages it reads outputs of."""
    return {
        stage.name: {parse_reference(ref)[0] for ref in stage.inputs.values() if parse_reference(ref)[0] is not None}
        for stage in spec.stages
    }


def validate_dag(spec, *, registry: Mapping[str, Stage], catalog: Mapping, origin: str) -> list[str]:
    """Check a :class:`~pipelines.config.PipelineSpec`; return the stage names in a run order.

    Raises :class:`~pipelines.config.ConfigError` naming the stage and the problem.
    """
    from pipelines.config import ConfigError

    names = [stage.name for stage in spec.stages]
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise ConfigError(f"{origin}: stages[{i}]: duplicate stage name {name!r}")
        if name in ("runtime", "tracking", "catalog"):
            raise ConfigError(f"{origin}: stages[{i}]: {name!r} is reserved for a config section; rename the stage")
        seen.add(name)
    by_name = {stage.name: stage for stage in spec.stages}

    for i, stage in enumerate(spec.stages):
        where = f"{origin}: stages[{i}] ({stage.name})"
        kind = registry[stage.uses]
        missing = [name for name in kind.inputs if name not in stage.inputs]
        if missing:
            raise ConfigError(f"{where}: missing input(s) {missing}; {stage.uses!r} reads {list(kind.inputs)}")
        readable = (*kind.inputs, *kind.optional_inputs)
        prefix = kind.input_prefix
        extra = [name for name in stage.inputs
                 if name not in readable and not (prefix and name.startswith(prefix) and len(name) > len(prefix))]
        if extra:
            also = f" and any {prefix}<label>" if prefix else ""
            raise ConfigError(f"{where}: unknown input(s) {extra}; {stage.uses!r} reads {list(readable)}{also}")
        for input_name, ref in stage.inputs.items():
            producer, output = parse_reference(ref)
            if producer is None:
                if output not in catalog:
                    raise ConfigError(
                        f"{where}.inputs.{input_name}: {ref!r} is neither '<stage>.<output>' nor a catalog entry "
                        f"(catalog: {', '.join(sorted(catalog)) or 'empty'})"
                    )
                continue
            if producer not in by_name:
                raise ConfigError(f"{where}.inputs.{input_name}: no stage named {producer!r} in this pipeline")
            if producer == stage.name:
                raise ConfigError(f"{where}.inputs.{input_name}: a stage cannot read its own output")
            produced = registry[by_name[producer].uses].outputs
            if output not in produced:
                raise ConfigError(
                    f"{where}.inputs.{input_name}: stage {producer!r} has no output {output!r}; it writes {list(produced)}"
                )

    # Kahn's algorithm, keeping the declared order among ready stages
    deps = dependencies(spec)
    order: list[str] = []
    done: set[str] = set()
    while len(order) < len(names):
        ready = [name for name in names if name not in done and deps[name] <= done]
        if not ready:
            cycle = _find_cycle({n: deps[n] for n in names if n not in done})
            raise ConfigError(f"{origin}: the stages form a cycle: {' -> '.join(cycle)}")
        for name in ready:
            order.append(name)
            done.add(name)
    return order


def _find_cycle(deps: Mapping[str, set[str]]) -> list[str]:
    for start in deps:
        path = [start]
        node = start
        visited = {start}
        while True:
            nxt = sorted(deps[node] & set(deps))
            if not nxt:
                break
            node = nxt[0]
            if node in visited:
                return path[path.index(node):] + [node]
            visited.add(node)
            path.append(node)
    return list(deps)
