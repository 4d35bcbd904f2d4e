"""Write infra/docker/constraints.txt: fsr's dependencies pinned to the versions installed here.

Run it from the repository root in an environment where the test suite passes:

    .venv/bin/python infra/docker/pin_constraints.py > infra/docker/constraints.txt

It pins every direct dependency in pyproject.toml (``[project] dependencies``) plus the few
packages that must move in lock-step with them (``COMPANIONS``). Local version labels such as
``+cpu`` are dropped: ``torch==2.13.0`` then matches both the CUDA wheel (GPU image) and the
``+cpu`` wheel (CPU image). Extras are dropped too: pip rejects extras in a constraints file.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from importlib import metadata

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Packages that are not direct dependencies but must match a pinned one.
COMPANIONS = {
    "mlflow": ["mlflow-skinny", "mlflow-tracing"],
    "pydantic": ["pydantic-core"],
    "boto3": ["botocore", "s3transfer"],
}


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0]


def render() -> str:
    """The constraints file for the packages installed here (``LookupError`` naming any missing)."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        deps = tomllib.load(fh)["project"]["dependencies"]
    names: list[str] = []
    for requirement in deps:
        name = _name(requirement)
        names.append(name)
        names.extend(COMPANIONS.get(name.lower(), []))
    lines = [
        "# fsr's dependencies pinned for the images (infra/docker/Dockerfile), the Ray cluster launcher",
        "# (infra/ray-cluster-launcher/cluster.yaml) and `make venv` (the tests run on these versions).",
        "# Generated, do not edit by hand:",
        "#   .venv/bin/python infra/docker/pin_constraints.py > infra/docker/constraints.txt",
        "# tests/infra checks that every dependency in pyproject.toml is pinned here within its range and",
        "# that the environment the tests run in has exactly these versions.",
    ]
    missing = []
    for name in names:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
            continue
        lines.append(f"{name}=={version.split('+', 1)[0]}")
    if missing:
        raise LookupError(f"not installed here: {', '.join(missing)}")
    return "\n".join(lines) + "\n"


def main() -> int:
    try:
        text = render()
    except LookupError as exc:
        print(exc, file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
