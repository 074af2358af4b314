"""POST /v1/segment with the real offline models: the scene's shape, exclusive masks, box
prompts, bad boxes, `?format=coco` read back by pycocotools, and the question the scene is
for ("how many blue chairs, and what are they next to?") on a photo whose content is known
(tests/scenes.py)."""

from __future__ import annotations

import io
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.main import create_app
from api.state import AppState, build_state
from search.config import IndexSettings, Settings
from search.datasets import check_coco, coco_self_ap
from search.fetch import Fetcher
from search.masks import decode_rle
from search.relations import PREDICATES
from tests.scenes import KnownScene, dining_scene

pytestmark = pytest.mark.slow

HEX = re.compile(r"^#[0-9a-f]{6}$")
PAIRS = [
    ("left_of", "right_of"),
    ("above", "below"),
    ("in_front_of", "behind"),
    ("next_to", "next_to"),
]
INVERSE = {a: b for pair in PAIRS + [("overlaps", "overlaps")] for a, b in (pair, pair[::-1])}


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppState]:
    """The models alone: /v1/segment needs no catalog, index or database rows."""
    tmp = tmp_path_factory.mktemp("segment")
    settings = Settings(
        database_url=f"sqlite:///{tmp / 'roomlens.db'}", index=IndexSettings(dir=tmp / "index")
    )
    state = build_state(settings)
    yield state
    state.engine.dispose()


@pytest.fixture(scope="module")
def client(state: AppState) -> Iterator[TestClient]:
    with TestClient(create_app(state.settings, state=state)) as client:
        yield client


@pytest.fixture(scope="module")
def scene(sample_dir: Path) -> KnownScene:
    return dining_scene(sample_dir)


@pytest.fixture(scope="module")
def room(sample_dir: Path) -> bytes:
    rooms = sorted((sample_dir / "rooms").glob("*.jpg"))
    return rooms[0].read_bytes()


def _segment(client: TestClient, data: bytes, boxes: list[str] | None = None, **params: Any) -> Any:
    form: dict[str, Any] = {"box": boxes} if boxes else {}
    if "min_score" in params:
        form["min_score"] = str(params.pop("min_score"))
    return client.post("/v1/segment", files={"image": ("room.png", data)}, data=form, params=params)


def _ok(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def _masks(body: dict[str, Any]) -> list[np.ndarray]:
    return [decode_rle(inst["mask"]["rle"]) for inst in body["instances"]]


def _check_shape(body: dict[str, Any], size: tuple[int, int]) -> None:
    width, height = size
    assert body["image"] == {"width": width, "height": height}
    instances = body["instances"]
    ids = [inst["id"] for inst in instances]
    assert ids == list(range(1, len(instances) + 1))
    for inst, mask in zip(instances, _masks(body), strict=True):
        assert mask.shape == (height, width)
        assert inst["area"] == pytest.approx(mask.sum() / (width * height), abs=1e-4)
        x0, y0, x1, y1 = inst["box"]
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert 0.0 <= inst["score"] <= 1.0 and inst["label"]
        assert inst["mask"]["polygons"] or not mask.any()
        for colour in inst["colors"]:
            assert set(colour) == {"name", "css", "hex", "share"}
            assert HEX.match(colour["hex"]) and 0.0 < colour["share"] <= 1.0
        shares = [c["share"] for c in inst["colors"]]
        assert shares == sorted(shares, reverse=True)
        assert sum(shares) <= 1.0 + 0.002  # each rounded to 3 places
        for rel in inst["relations"]:
            assert rel["predicate"] in PREDICATES
            assert rel["object"] in ids and rel["object"] != inst["id"]
    labels = [inst["label"] for inst in instances]
    assert body["counts"] == {lab: labels.count(lab) for lab in body["counts"]}
    assert sum(body["counts"].values()) == len(instances)
    assert sum(body["counts_by_color"].values()) == sum(1 for i in instances if i["colors"])
    assert body["description"].endswith(".")
    assert {"decode", "queue", "segment", "colors", "relations", "encode"} <= set(
        body["timings_ms"]
    )


def _exclusive(body: dict[str, Any]) -> None:
    masks = _masks(body)
    if masks:
        assert int(np.stack(masks).sum(axis=0).max()) <= 1, "two instances share a pixel"


# --- shape and masks --------------------------------------------------------------------------


def test_room_photo_scene_shape_and_exclusive_masks(client: TestClient, room: bytes) -> None:
    body = _ok(_segment(client, room))
    size = Image.open(io.BytesIO(room)).size
    _check_shape(body, size)
    assert body["instances"], "a real room photo has furniture in it"
    _exclusive(body)
    described = body["description"].lower()
    for label in body["counts"]:
        assert label.split()[-1][:4] in described  # every label is counted in the text


def test_relations_come_in_inverse_pairs(client: TestClient, room: bytes) -> None:
    body = _ok(_segment(client, room))
    facts = {
        (i["id"], r["predicate"], r["object"]) for i in body["instances"] for r in i["relations"]
    }
    for subject, predicate, obj in facts:
        if predicate in INVERSE:
            assert (obj, INVERSE[predicate], subject) in facts


def test_min_score_leaves_out_weaker_detections(client: TestClient, room: bytes) -> None:
    every = _ok(_segment(client, room))["instances"]
    strong = _ok(_segment(client, room, min_score=0.45))["instances"]
    assert [i["score"] for i in strong] == [i["score"] for i in every if i["score"] >= 0.45]


def test_nothing_found_is_an_empty_scene(client: TestClient) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 200, 200)).save(buf, format="PNG")
    body = _ok(_segment(client, buf.getvalue()))
    assert body["instances"] == [] and body["counts"] == {} and body["counts_by_color"] == {}
    assert body["description"] == "No objects found."


# --- box prompts ------------------------------------------------------------------------------


def test_box_prompts_give_one_instance_each_in_order(client: TestClient, scene: KnownScene) -> None:
    wall = "400,40,600,150"  # nothing detected there
    partly_outside = "-50,600,100,700"  # clipped to the photo
    boxes = [*scene.box_fields(), wall, partly_outside]
    body = _ok(_segment(client, scene.png, boxes))
    _check_shape(body, Image.open(io.BytesIO(scene.png)).size)
    _exclusive(body)
    instances = body["instances"]
    assert len(instances) == len(boxes)
    given = [list(map(float, b)) for b in scene.boxes.values()]
    assert [i["box"] for i in instances[:4]] == given
    assert instances[4]["box"] == [400.0, 40.0, 600.0, 150.0]
    assert instances[5]["box"] == [0.0, 600.0, 100.0, 683.0]
    labels = [i["label"] for i in instances]
    assert labels == ["chair", "dining table", "chair", "chair", "object", "object"]
    assert instances[4]["score"] == 1.0  # given, not detected
    for inst, mask, box in zip(instances, _masks(body), given, strict=False):
        x0, y0, x1, y1 = (int(v) for v in box)
        assert mask.any() and not mask[:, :x0].any() and not mask[:, x1:].any()
        assert not mask[:y0].any() and not mask[y1:].any(), f"{inst['id']} leaves its box"


def test_box_prompt_order_is_kept(client: TestClient, scene: KnownScene) -> None:
    fields = scene.box_fields()
    body = _ok(_segment(client, scene.png, fields[::-1]))
    assert [i["label"] for i in body["instances"]] == ["chair", "chair", "dining table", "chair"]
    assert [i["box"] for i in body["instances"]] == [
        list(map(float, b)) for b in list(scene.boxes.values())[::-1]
    ]


@pytest.mark.parametrize(
    "box",
    [
        "1,2,3",  # three numbers
        "a,b,c,d",
        "10,10,5,20",  # x1 < x0
        "10,20,30,20",  # no height
        "2000,2000,2100,2100",  # outside the photo
        "-300,-300,-10,-10",
        "",
        "1" * 400 + ",0,5,5",  # too long a field: 422 from the schema
    ],
)
def test_a_bad_box_is_a_400_problem(client: TestClient, scene: KnownScene, box: str) -> None:
    resp = _segment(client, scene.png, [scene.box_fields()[0], box])
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    if len(box) > 200:
        assert resp.status_code == 422, resp.text
        return
    assert resp.status_code == 400, resp.text
    assert body["code"] == "invalid_box" and body["status"] == 400 and "box" in body["detail"]


def test_photo_is_required(client: TestClient) -> None:
    resp = client.post("/v1/segment", data={"box": ["0,0,10,10"]})
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")


def test_image_url_under_the_fetch_policy(state: AppState, scene: KnownScene) -> None:
    """The photo at a URL, fetched as /v1/search fetches it; a private address is refused."""

    class Photo(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(scene.png)))
            self.end_headers()
            self.wfile.write(scene.png)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Photo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/dining.png"
    try:
        with TestClient(create_app(state.settings, state=state)) as plain:
            refused = plain.post("/v1/segment", data={"image_url": url})
            assert refused.status_code == 400 and refused.json()["code"] == "url_refused"
            both = plain.post(
                "/v1/segment", files={"image": ("a.png", scene.png)}, data={"image_url": url}
            )
            assert both.status_code == 422, both.text
        policy = replace(state.fetcher.policy, allow_hosts=frozenset({"127.0.0.1"}))
        allowed = replace(state, fetcher=Fetcher(policy))
        with TestClient(create_app(state.settings, state=allowed)) as client:
            form = {"image_url": url, "box": scene.box_fields()}
            body = _ok(client.post("/v1/segment", data=form))
            assert body["counts_by_color"]["blue chair"] == 2 and "fetch" in body["timings_ms"]
            doc = _ok(client.post("/v1/segment", data=form, params={"format": "coco"}))
            assert doc["images"][0]["file_name"] == url
    finally:
        server.shutdown()
        server.server_close()


# --- COCO -------------------------------------------------------------------------------------


def test_coco_format_reads_back_with_pycocotools(
    client: TestClient, scene: KnownScene, room: bytes, tmp_path: Path
) -> None:
    for name, data, boxes in [("scene", scene.png, scene.box_fields()), ("room", room, None)]:
        resp = _segment(client, data, boxes, format="coco")
        doc = _ok(resp)
        assert check_coco(doc) == []
        (image,) = doc["images"]
        width, height = Image.open(io.BytesIO(data)).size
        assert image == {"id": 1, "file_name": "room.png", "width": width, "height": height}
        scene_body = _ok(_segment(client, data, boxes))
        kept = [
            i for i, m in zip(scene_body["instances"], _masks(scene_body), strict=True) if m.any()
        ]
        assert len(doc["annotations"]) == len(kept) > 0
        names = {c["id"]: c["name"] for c in doc["categories"]}
        assert [names[a["category_id"]] for a in doc["annotations"]] == [i["label"] for i in kept]
        for ann, inst in zip(doc["annotations"], kept, strict=True):
            assert ann["segmentation"]["counts"] == inst["mask"]["rle"]["counts"]
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(doc))
        from pycocotools.coco import COCO

        assert len(COCO(str(path)).getAnnIds()) == len(kept)
        assert coco_self_ap(path) == {"segm": 1.0, "bbox": 1.0}


def test_coco_category_ids_are_coco_s(client: TestClient, scene: KnownScene) -> None:
    doc = _ok(_segment(client, scene.png, [*scene.box_fields(), "400,40,600,150"], format="coco"))
    ids = {c["name"]: c["id"] for c in doc["categories"]}
    assert ids == {"chair": 62, "dining table": 67, "object": 1000}


# --- the question ------------------------------------------------------------------------------


def _known(body: dict[str, Any], scene: KnownScene) -> dict[str, dict[str, Any]]:
    """Each known object (by name in `scene.boxes`) -> the instance whose mask covers most of
    it; each instance must cover most of one object and little of the others."""
    found: dict[str, dict[str, Any]] = {}
    names = list(scene.boxes)
    for inst, mask in zip(body["instances"], _masks(body), strict=True):
        cover = [
            float((mask & (scene.owner == k + 1)).sum() / (scene.owner == k + 1).sum())
            for k in range(len(names))
        ]
        best = int(np.argmax(cover))
        assert cover[best] >= 0.75, f"instance {inst['id']} covers {cover}"
        assert sorted(cover)[-2] <= 0.05, f"instance {inst['id']} spans objects: {cover}"
        assert names[best] not in found, f"{names[best]} found twice"
        found[names[best]] = inst
    assert set(found) == set(names)
    return found


def _neighbours(inst: dict[str, Any], predicate: str) -> set[int]:
    return {r["object"] for r in inst["relations"] if r["predicate"] == predicate}


@pytest.mark.parametrize("prompted", [False, True], ids=["detected", "box-prompted"])
def test_how_many_blue_chairs_and_what_are_they_next_to(
    client: TestClient, scene: KnownScene, prompted: bool
) -> None:
    body = _ok(_segment(client, scene.png, scene.box_fields() if prompted else None))
    _exclusive(body)
    assert body["counts"] == {"chair": 3, "dining table": 1}
    assert body["counts_by_color"]["blue chair"] == 2
    assert body["counts_by_color"]["white chair"] == 1
    objects = _known(body, scene)
    table = objects["table"]["id"]
    for name in ("blue_left", "blue_right"):
        chair = objects[name]
        assert chair["label"] == "chair" and chair["colors"][0]["name"] == "blue"
        assert _neighbours(chair, "next_to") == {table}
    assert _neighbours(objects["table"], "next_to") == {
        objects["blue_left"]["id"],
        objects["blue_right"]["id"],
    }
    assert table in _neighbours(objects["blue_left"], "left_of")
    assert table in _neighbours(objects["blue_right"], "right_of")
    white = objects["white"]
    assert white["colors"][0]["name"] == "white"
    assert not _neighbours(white, "next_to"), "100 px apart is near, not next to"
    assert objects["blue_right"]["id"] in _neighbours(white, "right_of")
    description = body["description"]
    assert description.startswith("3 chairs (2 blue, 1 white) and 1 ")
    assert "dining table." in description.split(". ")[0] + "."
    assert "The 2 blue chairs are next to the " in description
