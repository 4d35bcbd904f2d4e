"""The streamed plan of an archive restoration: units written to Parquet as the listing goes, read back whole."""

from __future__ import annotations

import json

from pipelines import archive_plan
from pipelines.archive_plan import iter_archive, read_plan_units, write_plan_units


def test_units_stream_to_several_files_images_first_then_video_chunks(tmp_path, monkeypatch):
    archive = tmp_path / "archive"
    for k in range(7):
        (archive / "photos" / f"{k}.jpg").parent.mkdir(parents=True, exist_ok=True)
        (archive / "photos" / f"{k}.jpg").write_bytes(b"x")
    (archive / "clips").mkdir()
    (archive / "clips" / "long.mp4").write_bytes(b"x")
    (archive / "clips" / "short.mp4").write_bytes(b"x")
    (archive / "notes.txt").write_text("not part of the archive")
    monkeypatch.setattr(archive_plan, "UNITS_PER_FILE", 2)  # several plan files from a tiny archive
    probed = []

    def probe(uris):
        probed.append(list(uris))
        return {uri: [{"chunk": k, "chunks": 3, "start_s": float(k), "end_s": None if k == 2 else k + 1.0}
                      for k in range(3)] for uri in uris if uri.endswith("long.mp4")}

    out = str(tmp_path / "out")
    counts = write_plan_units(out, iter_archive(str(archive)), unit_size=3, probe=probe)
    assert counts["files"] == 9 and counts["units"] == 3 + 3 + 1  # 7 images in 3s, 3 chunks, 1 short video
    assert counts["plan_files"] == [f"_plan/units-{k:05d}.parquet" for k in range(4)]
    assert len(probed) == 1 and sorted(u.rsplit("/", 1)[-1] for u in probed[0]) == ["long.mp4", "short.mp4"]
    table = read_plan_units(out, counts)
    assert table["unit"].to_pylist() == list(range(7))
    units = [json.loads(items) for items in table["items"].to_pylist()]
    assert [len(u) for u in units[:3]] == [3, 3, 1] and not any(table["video"].to_pylist()[:3])
    assert [(u[0]["relative"], u[0]["chunk"]) for u in units[3:]] == [
        ("clips/long.mp4", 0), ("clips/long.mp4", 1), ("clips/long.mp4", 2), ("clips/short.mp4", 0)]
    assert all(table["video"].to_pylist()[3:])
    assert units[-1][0]["chunks"] == 1 and units[-1][0]["end_s"] is None  # not probed into chunks: one unit


def test_part_names_map_to_units():
    from pipelines.archive_restore import _part_unit, part_name

    assert _part_unit(part_name(12)) == 12 and _part_unit("part-x.parquet") is None and _part_unit("other") is None
