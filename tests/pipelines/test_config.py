"""Config loading: typed sections, overrides, experiments, and errors that name the key and the file."""

from __future__ import annotations

import textwrap

import pytest

from pipelines.config import ConfigError, load_config, parse_override
from pipelines.stages import STAGES
from tests.pipelines.toy_stages import TOY_STAGES


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


@pytest.fixture()
def conf(tmp_path):
    root = tmp_path / "conf"
    write(root / "base.yaml", f"""
        runtime:
          work_root: {tmp_path}/work
        tracking:
          experiment: t
        """)
    write(root / "catalog.yaml", f"""
        catalog:
          raw:
            uri: {tmp_path}/raw
            kind: images
        """)
    write(root / "pipelines" / "toy.yaml", f"""
        pipeline:
          name: toy
          stages:
            - name: left
              uses: produce
              params: {{value: 2, log_dir: {tmp_path}}}
            - name: right
              uses: produce
              params: {{value: 3, log_dir: {tmp_path}}}
            - name: sum
              uses: combine
              inputs: {{a: left.data, b: right.data}}
              params: {{log_dir: {tmp_path}}}
        """)
    return root


def test_loads_typed_config(conf, tmp_path):
    cfg = load_config("toy", registry=TOY_STAGES, conf_dir=str(conf))
    assert cfg.order == ["left", "right", "sum"]
    assert cfg.stage_params["left"].value == 2 and cfg.stage_params["sum"].value == 1
    assert cfg.catalog["raw"].kind == "images"
    assert cfg.runtime.work_root == f"{tmp_path}/work"
    assert cfg.tracking_uri() == f"sqlite:///{tmp_path}/work/mlflow.db"
    resolved = cfg.to_dict()
    assert resolved["pipeline"]["stages"][2]["params"]["value"] == 1  # defaults are resolved into the log


def test_overrides_and_experiments(conf, tmp_path):
    write(conf / "experiments" / "big.yaml", """
        left:
          value: 20
        runtime:
          num_cpus: 2
        """)
    cfg = load_config("toy", registry=TOY_STAGES, conf_dir=str(conf), experiments=["big"],
                      overrides=["right.value=30", "tracking.experiment=other", "left.value=21"])
    assert cfg.stage_params["left"].value == 21  # command line wins over the experiment
    assert cfg.stage_params["right"].value == 30
    assert cfg.runtime.num_cpus == 2
    assert cfg.tracking.experiment == "other"


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["left.valu=3"], r"override 'left.valu=3': stages\[0\] \(left\)\.params\.valu: unknown key"),
        (["left.value=abc"], r"override 'left.value=abc': stages\[0\] \(left\)\.params\.value: .*integer"),
        (["runtime.num_cpu=2"], r"override 'runtime.num_cpu=2': runtime\.num_cpu: unknown key"),
        (["runtime.num_cpus=0"], r"override 'runtime.num_cpus=0': runtime\.num_cpus: .*greater than or equal to 1"),
        (["nosuch.x=1"], r"override 'nosuch.x=1': unknown section 'nosuch'"),
        (["novalue"], r"expected section.key=value"),
    ],
)
def test_bad_overrides_name_the_key_and_origin(conf, overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config("toy", registry=TOY_STAGES, conf_dir=str(conf), overrides=overrides)


def test_unknown_key_in_file_names_file_and_key(conf):
    text = (conf / "base.yaml").read_text().replace("experiment: t", "experiment: t\n  experimnt: typo")
    (conf / "base.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"base\.yaml: tracking\.experimnt: unknown key"):
        load_config("toy", registry=TOY_STAGES, conf_dir=str(conf))


def test_wrong_param_type_in_pipeline_file(conf):
    path = conf / "pipelines" / "toy.yaml"
    path.write_text(path.read_text().replace("value: 2,", "value: two,"))
    with pytest.raises(ConfigError, match=r"toy\.yaml: stages\[0\] \(left\)\.params\.value: .*integer.*'two'"):
        load_config("toy", registry=TOY_STAGES, conf_dir=str(conf))


@pytest.mark.parametrize(
    "edit, expected",
    [
        (("uses: combine", "uses: combin"), r"stages\[2\] \(sum\)\.uses: unknown stage kind 'combin'"),
        (("{a: left.data, b: right.data}", "{a: left.data}"), r"\(sum\): missing input\(s\) \['b'\]"),
        (("{a: left.data, b: right.data}", "{a: left.data, b: right.data, c: raw}"), r"unknown input\(s\) \['c'\]"),
        (("b: right.data", "b: nowhere.data"), r"inputs\.b: no stage named 'nowhere'"),
        (("b: right.data", "b: right.dat"), r"stage 'right' has no output 'dat'"),
        (("b: right.data", "b: rawx"), r"'rawx' is neither '<stage>.<output>' nor a catalog entry"),
        (("name: right", "name: left"), r"duplicate stage name 'left'"),
    ],
)
def test_invalid_pipelines(conf, edit, expected):
    path = conf / "pipelines" / "toy.yaml"
    path.write_text(path.read_text().replace(*edit))
    with pytest.raises(ConfigError, match=expected):
        load_config("toy", registry=TOY_STAGES, conf_dir=str(conf))


def test_cycle_is_reported(conf, tmp_path):
    write(conf / "pipelines" / "cycle.yaml", f"""
        pipeline:
          name: cycle
          stages:
            - name: x
              uses: combine
              inputs: {{a: y.data, b: raw}}
              params: {{log_dir: {tmp_path}}}
            - name: y
              uses: combine
              inputs: {{a: x.data, b: raw}}
              params: {{log_dir: {tmp_path}}}
        """)
    with pytest.raises(ConfigError, match=r"cycle: x -> y -> x|cycle: y -> x -> y"):
        load_config("cycle", registry=TOY_STAGES, conf_dir=str(conf))


def test_missing_and_malformed_files(conf):
    with pytest.raises(ConfigError, match=r"nope\.yaml: file not found"):
        load_config("nope", registry=TOY_STAGES, conf_dir=str(conf))
    (conf / "pipelines" / "bad.yaml").write_text("pipeline: [unclosed")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config("bad", registry=TOY_STAGES, conf_dir=str(conf))


def test_parse_override_reads_yaml_values():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a.b=true") == (["a", "b"], True)
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("a.b.c=s3://x/y") == (["a", "b", "c"], "s3://x/y")


def test_shipped_configs_are_valid():
    """Every pipeline in conf/ validates against the real stage registry."""
    import os

    from tests.conftest import ROOT

    folder = os.path.join(ROOT, "conf", "pipelines")
    names = [name[:-5] for name in os.listdir(folder) if name.endswith(".yaml")]
    assert "demo" in names
    for name in names:
        cfg = load_config(name, registry=STAGES, conf_dir=os.path.join(ROOT, "conf"))
        assert cfg.order
    # an experiment file is written for one pipeline (its sections are that pipeline's stages): each
    # must validate with at least one shipped pipeline
    for experiment in os.listdir(os.path.join(ROOT, "conf", "experiments")):
        errors = []
        for name in names:
            try:
                load_config(name, registry=STAGES, conf_dir=os.path.join(ROOT, "conf"), experiments=[experiment[:-5]])
                break
            except ConfigError as exc:
                errors.append(str(exc))
        else:
            raise AssertionError(f"experiment {experiment} fits no pipeline: {errors}")
