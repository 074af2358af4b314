"""`roomlens segment`, run in-process on the real models, on the photo of known content
(tests/scenes.py): the description and table, `--json` (the API's body), `--coco`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from roomlens.cli import build_parser, main
from search.datasets import check_coco
from tests.scenes import KnownScene, dining_scene

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scene(sample_dir: Path) -> KnownScene:
    return dining_scene(sample_dir)


@pytest.fixture(scope="module")
def photo(scene: KnownScene, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("segment") / "dining.png"
    path.write_bytes(scene.png)
    return path


def _boxes(scene: KnownScene) -> list[str]:
    return [arg for box in scene.box_fields() for arg in ("--box", box)]


def test_prints_the_description_and_a_table(
    photo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["segment", str(photo)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("3 chairs (2 blue, 1 white) and 1 ")
    assert "The 2 blue chairs are next to the " in lines[0]
    header = lines[2].split()
    assert header[:5] == ["id", "label", "score", "colours", "area"]
    rows = [re.split(r"\s{2,}", line) for line in lines[3 : lines.index("", 3)]]
    assert len(rows) == 4  # id, label, score, colours, area, relations
    assert sorted(row[1] for row in rows) == ["chair", "chair", "chair", "dining table"]
    assert sum(row[3].startswith("blue ") for row in rows if row[1] == "chair") == 2
    (table,) = (row for row in rows if row[1] == "dining table")
    assert table[5].startswith("next to ")  # both blue chairs' ids
    assert lines[-1].startswith("1100x683 px; segment ")


def test_json_is_the_api_body(
    photo: Path, scene: KnownScene, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["segment", str(photo), *_boxes(scene), "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert set(body) == {
        "image",
        "instances",
        "counts",
        "counts_by_color",
        "description",
        "timings_ms",
    }
    assert [i["label"] for i in body["instances"]] == ["chair", "dining table", "chair", "chair"]
    assert [i["box"] for i in body["instances"]] == [
        list(map(float, b)) for b in scene.boxes.values()
    ]
    assert body["counts_by_color"]["blue chair"] == 2
    table = body["instances"][1]["id"]
    for chair in (body["instances"][0], body["instances"][2]):
        assert {r["object"] for r in chair["relations"] if r["predicate"] == "next_to"} == {table}


def test_coco_is_a_coco_document(
    photo: Path, scene: KnownScene, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["segment", str(photo), *_boxes(scene), "--min-score", "0.2", "--coco"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert check_coco(doc) == []
    assert doc["images"][0]["file_name"] == str(photo)
    assert len(doc["annotations"]) == 4
    assert {c["name"] for c in doc["categories"]} == {"chair", "dining table"}


def test_bad_box_and_bad_flags(photo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["segment", str(photo), "--box", "5,5,1,1"]) == 1
    assert "'5,5,1,1' must have x1 > x0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["segment", str(photo), "--json", "--coco"])
    assert exc.value.code == 2
