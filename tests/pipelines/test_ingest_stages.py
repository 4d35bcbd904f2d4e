"""The real-data ingest stages through the real runner, Ray Data, MLflow and S3 (moto):
rows and quarantine, MLflow metrics, cache, idempotence, resume of one lost shard, duplicates,
the `fsr ingest` command and the conf/pipelines files."""

from __future__ import annotations

import os
import shutil
import textwrap
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from fsr_core import storage
from fsr_core.data.codec import encode_png
from fsr_core.data.ingest.base import SourceItem
from fsr_core.data.ingest.wider_face import WiderFaceReader
from fsr_core.data.schema import decode_json_column, make_face_id
from fsr_core.data.shards import list_shards, read_faces
from pipelines.config import ConfigError, load_config
from pipelines.runner import run_pipeline
from pipelines.stage import StageContext
from pipelines.stages.ingest import INGEST_STAGES, find_duplicates, read_quarantine, run_ingest
from tests.conftest import ROOT
from tests.fsr_core.data.ingest.trees import build_celeba, build_celeba_hq, build_ffhq, build_wider, upload_tree

pytestmark = pytest.mark.timeout(240)

WIDER_EXPECTED_QUARANTINE = {
    "flag_invalid": 1, "box_outside_image": 1, "empty_box": 1, "face_too_small": 1, "malformed_annotation": 3,
    "truncated_image": 1, "empty_file": 1, "not_an_image": 1, "missing_file": 1, "duplicate": 1,
}


def write_conf(root, *, work_root: str, tracking_uri: str, catalog: dict[str, str], pipeline: str) -> str:
    (root / "pipelines").mkdir(parents=True, exist_ok=True)
    (root / "base.yaml").write_text(textwrap.dedent(f"""
        runtime: {{work_root: '{work_root}'}}
        tracking: {{uri: '{tracking_uri}', experiment: ingest-test}}
        """))
    entries = "".join(f"  {name}: {{uri: '{uri}', kind: dataset_root}}\n" for name, uri in catalog.items())
    (root / "catalog.yaml").write_text("catalog:\n" + entries)
    (root / "pipelines" / "p.yaml").write_text(textwrap.dedent(pipeline))
    return str(root)


WIDER_PIPELINE = """
    pipeline:
      name: p
      stages:
        - name: wider
          uses: ingest_wider_face
          inputs: {root: wider_face}
          params: {unit_size: 3, task_cpus: 1.0}
    """


def snapshot(*folders: str) -> dict[str, bytes]:
    return {info.uri: storage.read_bytes(info.uri) for folder in folders for info in storage.list_files(folder)}


def stage_metrics(result, stage: str) -> dict[str, float]:
    return MlflowClient(result.tracking_uri).get_run(result.stages[stage].run_id).data.metrics


def test_wider_face_stage_tracks_caches_resumes_and_is_idempotent(ray_session, tmp_path, tracking_uri):
    data = build_wider(str(tmp_path / "wider"), duplicate=True)
    conf = write_conf(tmp_path / "conf", work_root=str(tmp_path / "work"), tracking_uri=tracking_uri,
                      catalog={"wider_face": data}, pipeline=WIDER_PIPELINE)
    cfg = load_config("p", registry=INGEST_STAGES, conf_dir=conf)
    first = run_pipeline(cfg, registry=INGEST_STAGES, printer=None)
    faces, quarantine = first.stages["wider"].outputs["faces"], first.stages["wider"].outputs["quarantine"]
    assert os.path.dirname(faces) == os.path.dirname(quarantine)  # siblings: faces/ holds face shards only

    table = read_faces(faces)
    assert table.num_rows == 5 and len(set(table["id"].to_pylist())) == 5
    assert len(list_shards(faces)) == 5  # 13 items in units of 3, one shard per unit (empty ones too)
    assert set(table["split"].to_pylist()) == {"train", "val"}
    records = read_quarantine(quarantine)
    assert dict(Counter(records["reason"].to_pylist())) == WIDER_EXPECTED_QUARANTINE
    duplicate = next(r for r in records.to_pylist() if r["reason"] == "duplicate")
    assert duplicate["source_uri"].endswith("2_copy.jpg") and "0_Parade_a.jpg, which is kept" in duplicate["detail"]
    assert all(q["blur"] in (0, 1, 2) for q in decode_json_column(table["quality"]))

    metrics = stage_metrics(first, "wider")
    assert metrics["rows"] == 5 and metrics["items"] == 13 and metrics["shards_written"] == 5
    assert metrics["shards_reused"] == 0 and metrics["quarantined_face_too_small"] == 1 and metrics["duplicates"] == 1
    assert metrics["quarantined"] == sum(WIDER_EXPECTED_QUARANTINE.values()) and metrics["crops_per_second"] > 0
    client = MlflowClient(tracking_uri)
    assert "ingest_summary.json" in [a.path for a in client.list_artifacts(first.stages["wider"].run_id)]
    before = snapshot(faces, quarantine)

    # same config and data: the runner reuses the stage
    assert run_pipeline(cfg, registry=INGEST_STAGES, printer=None).executed == []

    # an interrupted ingest: one shard lost; the re-run redoes only that unit, byte for byte
    storage.delete(list_shards(faces)[1])
    again = run_pipeline(cfg, registry=INGEST_STAGES, force={"wider"}, printer=None)
    metrics = stage_metrics(again, "wider")
    assert metrics["shards_written"] == 1 and metrics["shards_reused"] == 4 and metrics["rows"] == 5
    assert snapshot(faces, quarantine) == before

    # idempotence: a full re-run writes nothing and duplicates nothing
    again = run_pipeline(cfg, registry=INGEST_STAGES, force={"wider"}, printer=None)
    assert stage_metrics(again, "wider")["shards_written"] == 0
    assert snapshot(faces, quarantine) == before and read_faces(faces).num_rows == 5


def test_wider_face_stage_on_s3(ray_session, tmp_path, tracking_uri, s3_bucket):
    local = build_wider(str(tmp_path / "wider"))
    data = upload_tree(local, f"{s3_bucket}/datasets/wider")
    conf = write_conf(tmp_path / "conf", work_root=f"{s3_bucket}/work", tracking_uri=tracking_uri,
                      catalog={"wider_face": data}, pipeline=WIDER_PIPELINE.replace("unit_size: 3", "unit_size: 6"))
    result = run_pipeline(load_config("p", registry=INGEST_STAGES, conf_dir=conf), registry=INGEST_STAGES, printer=None)
    faces = result.stages["wider"].outputs["faces"]
    assert faces.startswith(f"{s3_bucket}/work/")
    table = read_faces(faces)
    # the same crops and ids as the plain reader on the local copy
    reader = WiderFaceReader()
    expected = [out for item in reader.list_items(local) for out in reader.process(item) if isinstance(out, dict)]
    assert table["id"].to_pylist() == [row["id"] for row in expected]
    assert table["image_png"].to_pylist() == [row["image_png"] for row in expected]
    assert all(uri.startswith(data) for uri in table["source_uri"].to_pylist())
    reasons = Counter(read_quarantine(result.stages["wider"].outputs["quarantine"])["reason"].to_pylist())
    assert reasons == Counter({k: v for k, v in WIDER_EXPECTED_QUARANTINE.items() if k != "duplicate"})


def run_stage(name: str, root: str, out, **params) -> dict[str, str]:
    """A stage function called directly in the test process (no MLflow run, no stage task)."""
    stage = INGEST_STAGES[name]
    ctx = StageContext(pipeline="t", stage=name, params=stage.params(**params), work_dir=str(out),
                       outputs={"faces": str(out / "faces"), "quarantine": str(out / "quarantine")})
    return stage.fn(ctx, root=root)


def test_celeba_celeba_hq_and_ffhq_stages(ray_session, tmp_path):
    celeba = build_celeba(str(tmp_path / "celeba"))["root"]
    outputs = run_stage("ingest_celeba", celeba, tmp_path / "celeba_out", size=32, unit_size=4, task_cpus=1.0)
    rows = read_faces(outputs["faces"])
    assert rows["split"].to_pylist() == ["train", "train", "val", "test"]
    assert set(rows["height"].to_pylist()) == {32} and all(len(p) == 10 for p in rows["landmarks"].to_pylist())
    assert decode_json_column(rows["attributes"])[0]["smiling"] in (0, 1)
    assert sorted(read_quarantine(outputs["quarantine"])["reason"].to_pylist()) == [
        "malformed_annotation", "missing_file", "not_in_partition", "truncated_image"]

    hq = build_celeba_hq(str(tmp_path / "celeba_hq"), duplicate=True)
    outputs = run_stage("ingest_celeba_hq", hq, tmp_path / "hq_out", size=16, unit_size=5, task_cpus=1.0)
    hq_rows = read_faces(outputs["faces"])
    assert hq_rows.num_rows == 6 and set(hq_rows["source"].to_pylist()) == {"celeba_hq"}
    records = read_quarantine(outputs["quarantine"]).to_pylist()
    assert sorted(r["reason"] for r in records) == ["duplicate", "empty_file", "image_too_small", "not_square"]
    duplicate = next(r for r in records if r["reason"] == "duplicate")
    assert duplicate["source_uri"].endswith("more/z_copy.png") and duplicate["detail"].endswith(
        os.path.join(hq, "1.png") + ", which is kept")

    ffhq = build_ffhq(str(tmp_path / "ffhq"))["root"]
    outputs = run_stage("ingest_ffhq", ffhq, tmp_path / "ffhq_out", size=16, task_cpus=1.0)
    ffhq_rows = read_faces(outputs["faces"])
    assert sorted(zip(ffhq_rows["source_uri"].to_pylist(), ffhq_rows["split"].to_pylist()))[:2] == [
        (os.path.join(ffhq, "images1024x1024", "00000", "00000.png"), "train"),
        (os.path.join(ffhq, "images1024x1024", "00000", "00001.png"), "val")]
    assert read_quarantine(outputs["quarantine"])["reason"].to_pylist() == ["checksum_mismatch"]


def test_fsr_ingest_command(ray_session, tmp_path, tracking_uri, capsys):
    from pipelines.ingest_cli import main

    data = build_celeba_hq(str(tmp_path / "hq"))
    out = str(tmp_path / "out")
    base = ["ingest", "celeba_hq", "--root", data, "--out", out, "--tracking-uri", tracking_uri,
            "--conf-dir", str(tmp_path / "no-conf")]
    assert main(base + ["size=16", "unit_size=4"]) == 0
    assert read_faces(os.path.join(out, "faces")).num_rows == 6
    assert len(read_quarantine(os.path.join(out, "quarantine"))) == 3
    capsys.readouterr()
    # the same command again resumes: nothing left to do
    assert main(base + ["unit_size=4", "size=16"]) == 0
    assert "3 unit(s) already written, 0 to run" in capsys.readouterr().out
    runs = MlflowClient(tracking_uri).search_runs(
        [MlflowClient(tracking_uri).get_experiment_by_name("fsr").experiment_id])
    assert len(runs) == 2 and all(r.data.tags["fsr_kind"] == "ingest" for r in runs)
    # other settings into the same folder would mix two ingests: refused
    assert main(base + ["size=8", "unit_size=4"]) == 1
    assert "different plan" in capsys.readouterr().err
    assert main(base + ["size=many"]) == 2


def test_conf_pipelines_validate(tmp_path):
    conf = tmp_path / "conf"
    (conf / "pipelines").mkdir(parents=True)
    for name in ("ingest_wider_face", "ingest_celeba", "ingest_ffhq"):
        shutil.copy(os.path.join(ROOT, "conf", "pipelines", f"{name}.yaml"), conf / "pipelines")
    entries = "".join(f"  {name}: {{uri: /data/{name}, kind: dataset_root}}\n"
                      for name in ("wider_face", "celeba", "celeba_hq", "ffhq"))
    (conf / "catalog.yaml").write_text("catalog:\n" + entries)
    for name in ("ingest_wider_face", "ingest_celeba", "ingest_ffhq"):
        cfg = load_config(name, registry=INGEST_STAGES, conf_dir=str(conf))
        assert len(cfg.order) == 1
    with pytest.raises(ConfigError, match="WIDER FACE test has no annotations"):
        load_config("ingest_wider_face", registry=INGEST_STAGES, conf_dir=str(conf), overrides=["wider_face.splits=[test]"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_config("ingest_celeba", registry=INGEST_STAGES, conf_dir=str(conf), overrides=["celeba.sise=64"])


def test_find_duplicates_reads_only_size_collisions():
    contents = {"a": b"same", "b": b"diff", "c": b"same", "d": b"longer", "e": b"same"}
    sizes = {uri: len(data) for uri, data in contents.items()}
    reads: list[str] = []

    def read(uri: str) -> bytes:
        reads.append(uri)
        return contents[uri]

    items = [SourceItem(uri) for uri in ("c", "a", "b", "d")] + [SourceItem("e", {"quarantine": [("x", "y")]})]
    duplicates = find_duplicates(items, sizes, read=read)
    assert set(duplicates) == {"a"} and duplicates["a"][0] == "c"  # the first in listing order is kept
    assert sorted(reads) == ["a", "b", "c"]  # "d" has a unique size; "e" is already quarantined


@dataclass(frozen=True)
class FlakyReader:
    """One tiny crop per item; ``item-3`` fails while the ``marker`` file exists (a crash mid-ingest)."""

    marker: str
    source: ClassVar[str] = "flaky"

    def list_items(self, root: str) -> list[SourceItem]:
        return [SourceItem(f"{root}/item-{i}", {}, "train") for i in range(8)]

    def process(self, item: SourceItem):
        if item.uri.endswith("item-3") and os.path.exists(self.marker):
            if open(self.marker).read() == "once":  # a transient error: gone on the retry
                os.unlink(self.marker)
            raise OSError("connection reset")
        yield {"id": make_face_id(self.source, item.uri), "image_png": encode_png(np.zeros((4, 4, 3), np.uint8)),
               "height": 4, "width": 4, "source": self.source, "source_uri": item.uri, "split": "train"}


def test_a_failed_unit_fails_the_ingest_and_the_rerun_finishes_it(ray_session, tmp_path):
    marker = tmp_path / "fail"
    marker.write_text("")
    ctx = StageContext(pipeline="t", stage="flaky", params=INGEST_STAGES["ingest_celeba_hq"].params(),
                       work_dir=str(tmp_path), outputs={"faces": str(tmp_path / "faces"), "quarantine": str(tmp_path / "q")})
    reader = FlakyReader(str(marker))
    with pytest.raises(Exception, match=r"1 unit\(s\) failed .*item-3: OSError: connection reset"):
        run_ingest(ctx, reader, str(tmp_path / "data"), unit_size=2, task_cpus=1.0, printer=None)
    written = {os.path.basename(uri) for uri in list_shards(str(tmp_path / "faces"))}
    assert written == {"part-00000.parquet", "part-00002.parquet", "part-00003.parquet"}  # all but the failed one
    marker.unlink()
    result = run_ingest(ctx, reader, str(tmp_path / "data"), unit_size=2, task_cpus=1.0, printer=None)
    assert result["shards_reused"] == len(written) and result["shards_written"] == 4 - len(written)
    assert result["rows"] == 8 and read_faces(str(tmp_path / "faces")).num_rows == 8


def test_an_error_that_passes_on_the_retry_fails_nothing(ray_session, tmp_path):
    marker = tmp_path / "fail"
    marker.write_text("once")
    ctx = StageContext(pipeline="t", stage="flaky", params=INGEST_STAGES["ingest_celeba_hq"].params(),
                       work_dir=str(tmp_path), outputs={"faces": str(tmp_path / "faces"), "quarantine": str(tmp_path / "q")})
    result = run_ingest(ctx, FlakyReader(str(marker)), str(tmp_path / "data"), unit_size=2, task_cpus=1.0, printer=None)
    assert not marker.exists() and result["units_failed"] == [] and result["rows"] == 8


@pytest.mark.timeout(240)
def test_folder_and_video_ingest_stages(ray_session, tmp_path, tracking_uri):
    """Inputs without boxes through the runner: the astronaut is found, bad files are quarantined."""
    import av
    import cv2
    import numpy as np
    import yaml
    from skimage.data import astronaut

    from fsr_core.data.shards import read_faces as _read_faces
    from pipelines.config import load_config as _load_config
    from pipelines.runner import run_pipeline as _run_pipeline
    from pipelines.stages import STAGES as _STAGES
    from pipelines.stages.ingest import read_quarantine as _read_quarantine

    images = tmp_path / "images" / "nested"
    images.mkdir(parents=True)
    cv2.imwrite(str(images / "astronaut.png"), cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR))
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    videos = tmp_path / "videos"
    videos.mkdir()
    with av.open(str(videos / "clip.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=5)
        stream.width, stream.height, stream.pix_fmt = 256, 256, "yuv420p"
        frame_rgb = cv2.resize(astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
        for _ in range(10):  # 2 s at 5 fps
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame_rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)

    common = {"size": 64, "score_threshold": 0.3, "upsample": 1}
    root = tmp_path / "conf"
    (root / "pipelines").mkdir(parents=True)
    (root / "base.yaml").write_text(yaml.safe_dump({"runtime": {"work_root": str(tmp_path / "work")},
                                                    "tracking": {"uri": tracking_uri}}))
    (root / "catalog.yaml").write_text(yaml.safe_dump({"catalog": {
        "photos": {"uri": str(tmp_path / "images"), "kind": "images"},
        "clips": {"uri": str(videos), "kind": "videos"}}}))
    (root / "pipelines" / "wild.yaml").write_text(yaml.safe_dump({"pipeline": {"name": "wild", "stages": [
        {"name": "photos", "uses": "ingest_folder", "inputs": {"root": "photos"}, "params": common},
        {"name": "clips", "uses": "ingest_video", "inputs": {"root": "clips"}, "params": {**common, "sample_fps": 1.0}},
    ]}}))
    result = _run_pipeline(_load_config("wild", registry=_STAGES, conf_dir=str(root)), registry=_STAGES, printer=None)

    photos = _read_faces(result.stages["photos"].outputs["faces"])
    assert photos.num_rows == 1 and photos["height"].to_pylist() == [64]
    assert photos["source_uri"][0].as_py().endswith("astronaut.png")
    reasons = _read_quarantine(result.stages["photos"].outputs["quarantine"])["reason"].to_pylist()
    assert reasons == ["truncated_image"] or reasons == ["corrupt_image"]

    clips = _read_faces(result.stages["clips"].outputs["faces"])
    assert sorted(clips["frame_index"].to_pylist()) == [0, 5]  # 1 frame per second of a 2 s clip at 5 fps
    assert np.all(np.array(clips["height"].to_pylist()) == 64)
