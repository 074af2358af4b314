"""Dominant colours of a mask (search.colors) and `roomlens eval-colors` (search.evaluation.colors).

Synthetic patches of known colour under a shadow gradient and a specular highlight, two-colour
masks, the box outside the mask, a warm light; then real catalog cut-outs (skipped without the
IKEA set) and the command on a tiny generated feed.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
import pytest
import webcolors
from PIL import Image

from roomlens.cli import main
from search.colors import (
    VOCABULARY,
    DominantColor,
    basic_name,
    dominant_colors,
    estimate_white,
    srgb_to_lab,
)
from search.evaluation.colors import (
    ColorEvalOptions,
    color_word,
    drop_see_through,
    eval_colors_command,
    read_color_items,
)

# A typical sRGB value for each basic term.
TYPICAL = {
    "black": (20, 20, 20),
    "white": (245, 245, 245),
    "grey": (128, 128, 128),
    "brown": (120, 72, 40),
    "beige": (225, 205, 170),
    "red": (200, 30, 40),
    "orange": (240, 130, 30),
    "yellow": (240, 210, 40),
    "green": (50, 150, 60),
    "blue": (40, 80, 190),
    "purple": (120, 50, 150),
    "pink": (240, 160, 190),
}


def _linear(rgb: np.ndarray) -> np.ndarray:
    s = np.asarray(rgb, dtype=np.float64) / 255.0
    return np.where(s <= 0.04045, s / 12.92, ((s + 0.055) / 1.055) ** 2.4)


def _srgb(linear: np.ndarray) -> np.ndarray:
    x = np.clip(linear, 0.0, 1.0)
    s = np.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1 / 2.4) - 0.055)
    return np.asarray(np.rint(s * 255), dtype=np.uint8)


def shaded_patch(rgb: tuple[int, int, int], size: int = 120, shade: float = 0.45) -> np.ndarray:
    """A patch lit from the left: linear light falls to `shade` across it, with a specular
    highlight (3% of the area, 80% white) near its top-left."""
    light = np.linspace(1.0, shade, size)[None, :, None] * np.ones((size, 1, 1))
    linear = _linear(np.array(rgb))[None, None, :] * light
    yy, xx = np.mgrid[:size, :size]
    spot = (yy - 0.3 * size) ** 2 + (xx - 0.3 * size) ** 2 < 0.03 * size * size / np.pi
    linear[spot] = 0.2 * linear[spot] + 0.8
    return _srgb(linear)


def in_box(patch: np.ndarray, other: tuple[int, int, int], pad: int = 30):
    """`patch` inside a larger box of colour `other`, and the mask of the patch only."""
    h, w = patch.shape[:2]
    image = np.empty((h + 2 * pad, w + 2 * pad, 3), dtype=np.uint8)
    image[:] = other
    image[pad : pad + h, pad : pad + w] = patch
    mask = np.zeros(image.shape[:2], dtype=bool)
    mask[pad : pad + h, pad : pad + w] = True
    return image, mask


def test_vocabulary_is_the_twelve_basic_terms() -> None:
    words = "black white grey brown beige red orange yellow green blue purple pink"
    assert tuple(words.split()) == VOCABULARY
    assert set(VOCABULARY) == set(TYPICAL)


@pytest.mark.parametrize("name", list(TYPICAL))
def test_typical_value_is_named(name: str) -> None:
    lab = srgb_to_lab(np.array([TYPICAL[name]]) / 255.0)[0]
    assert basic_name(*lab) == name


@pytest.mark.parametrize("name", list(TYPICAL))
def test_shadow_and_highlight_keep_the_name_and_the_box_does_not_count(name: str) -> None:
    other = TYPICAL["green"] if name != "green" else TYPICAL["red"]
    image, mask = in_box(shaded_patch(TYPICAL[name]), other)
    colours = dominant_colors(image, mask)
    assert colours[0].name == name
    assert colours[0].share >= 0.9
    other_name = "green" if name != "green" else "red"
    assert other_name not in [c.name for c in colours]


@pytest.mark.parametrize(
    ("first", "second", "split"),
    [
        ("blue", "white", 0.7),
        ("black", "white", 0.6),
        ("red", "green", 0.6),
        ("beige", "brown", 0.65),
    ],
)
def test_two_colours_with_their_shares(first: str, second: str, split: float) -> None:
    size = 160
    patch = shaded_patch(TYPICAL[second], size=size, shade=0.7)
    left = shaded_patch(TYPICAL[first], size=size, shade=0.7)
    cut = int(split * size)
    patch[:, :cut] = left[:, :cut]
    image, mask = in_box(patch, (0, 0, 0) if first != "black" else (255, 0, 0))
    colours = dominant_colors(image, mask, k=3)
    assert [c.name for c in colours[:2]] == [first, second]
    assert colours[0].share == pytest.approx(split, abs=0.05)
    assert colours[1].share == pytest.approx(1 - split, abs=0.05)
    assert sum(c.share for c in colours) <= 1.0 + 1e-9


def test_empty_mask_gives_nothing() -> None:
    image = np.full((40, 40, 3), 128, dtype=np.uint8)
    assert dominant_colors(image, np.zeros((40, 40), dtype=bool)) == []


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError):
        dominant_colors(np.zeros((10, 10, 3), dtype=np.uint8), np.ones((10, 11), dtype=bool))


def test_deterministic_and_well_formed() -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)
    mask = np.zeros((300, 300), dtype=bool)
    mask[40:260, 30:280] = True
    first, second = dominant_colors(image, mask, k=5), dominant_colors(image, mask, k=5)
    assert first == second and 1 <= len(first) <= 5
    css = set(webcolors.names("css3"))
    shares = [c.share for c in first]
    assert shares == sorted(shares, reverse=True)
    for colour in first:
        assert colour.name in VOCABULARY and colour.css in css
        assert len(colour.hex) == 7 and colour.hex.startswith("#")
        assert 0.0 < colour.share <= 1.0


def test_as_dict() -> None:
    colour = DominantColor("blue", "royalblue", "#4169e1", 0.123456)
    assert colour.as_dict() == {
        "name": "blue",
        "css": "royalblue",
        "hex": "#4169e1",
        "share": 0.123,
    }


def test_warm_light_is_discounted() -> None:
    """A white and a grey patch in a warm-lit photo (its white background gone cream)."""
    warm = np.array([1.0, 0.75, 0.5])  # linear RGB gains, roughly a 3500-4000 K light
    for name in ("white", "grey", "blue"):
        patch = _linear(np.array(TYPICAL[name]))[None, None, :] * np.ones((100, 100, 1))
        image, mask = in_box(_srgb(patch * warm), tuple(int(v) for v in _srgb(warm)))
        assert estimate_white(image) is not None
        assert dominant_colors(image, mask)[0].name == name


def test_a_coloured_photo_is_not_white_balanced() -> None:
    image = np.empty((100, 100, 3), dtype=np.uint8)
    image[:] = TYPICAL["green"]
    assert estimate_white(image) is None
    assert dominant_colors(image, np.ones((100, 100), dtype=bool))[0].name == "green"


def test_fast_enough() -> None:
    image, mask = in_box(shaded_patch(TYPICAL["blue"], size=400), (255, 255, 255), pad=50)
    times = []
    for _ in range(15):
        started = time.perf_counter()
        dominant_colors(image, mask)
        times.append(time.perf_counter() - started)
    assert statistics.median(times) < 0.02  # ~3 ms on a quiet core; slack for shared CI


# --------------------------------------------------------------------------- eval-colors


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("White", "white"),
        ("Off-white", "white"),
        ("White,white", "white"),
        ("High-gloss white,chrome-plated", "white"),
        ("Dark grey", "grey"),
        ("Gray", "grey"),
        ("Turquoise", "blue"),
        ("Dark lilac", "purple"),
        ("Black-brown", None),
        ("Grey-green", None),
        ("Stainless steel", None),
        ("Multicolour", None),
        ("", None),
    ],
)
def test_color_word(text: str, word: str | None) -> None:
    assert color_word(text) == word


def test_see_through_gaps_are_dropped_but_light_faces_stay() -> None:
    image = np.full((100, 200, 3), 255, dtype=np.uint8)
    image[20:80, 20:80] = 30  # a black frame ...
    image[35:65, 35:65] = 255  # ... around a gap showing the white background
    image[20:80, 120:180] = 200  # a light grey box edge ...
    image[25:75, 125:175] = 255  # ... around its blown-out white face
    mask = np.zeros((100, 200), dtype=bool)
    mask[20:80, 20:80] = True
    mask[20:80, 120:180] = True
    kept = drop_see_through(image, mask)
    assert not kept[35:65, 35:65].any()
    assert kept[25:75, 125:175].all()
    assert kept[20:35, 20:80].all()


def _product_image(path: Path, colour: tuple[int, int, int], hole: bool = False) -> None:
    """A 240x240 product shot on white: a shaded rounded shape, a see-through hole if asked."""
    image = np.full((240, 240, 3), 255, dtype=np.uint8)
    patch = shaded_patch(colour, size=160, shade=0.6)
    yy, xx = np.mgrid[:160, :160]
    inside = (yy - 80) ** 2 / 80**2 + (xx - 80) ** 2 / 70**2 <= 1
    if hole:
        inside &= ~((np.abs(yy - 80) < 35) & (np.abs(xx - 80) < 30))
    region = image[40:200, 40:200]
    region[inside] = patch[inside]
    Image.fromarray(image).save(path)


def _tiny_feed(tmp_path: Path, *, missing: bool = False) -> Path:
    (tmp_path / "images").mkdir()
    rows = []
    products = [
        ("1", "Red", "red", False),
        ("2", "Dark blue", "blue", False),
        ("3", "Black", "black", True),
        ("4", "Turquoise", "blue", False),
        ("5", "Yellow", "yellow", False),
    ]
    for sku, text, name, hole in products:
        _product_image(tmp_path / "images" / f"{sku}.png", TYPICAL[name], hole=hole)
        rows.append({"sku": sku, "color": text, "image": f"images/{sku}.png"})
    rows.append({"sku": "6", "color": "Black-brown", "image": "images/1.png"})  # two words
    rows.append({"sku": "7", "color": "", "image": "images/1.png"})
    if missing:
        rows.append({"sku": "8", "color": "Green", "image": "images/nope.png"})
    feed = tmp_path / "catalog.jsonl"
    feed.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return feed


def test_eval_colors_command_on_a_tiny_feed(tmp_path: Path, capsys) -> None:
    feed = _tiny_feed(tmp_path)
    out = tmp_path / "report"
    code = main(["eval-colors", "--feed", str(feed), "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "top-1 1.000, top-2 1.000, macro top-1 1.000 on 5 products" in printed
    report = json.loads((out / "colors.json").read_text())
    assert report["top1"] == 1.0 and report["macro_top1"] == 1.0
    assert report["meta"]["products"] == 7 and report["meta"]["labelled"] == 5
    assert report["per_color"]["blue"]["count"] == 2
    assert [p["expected"] for p in report["products"]] == ["red", "blue", "black", "blue", "yellow"]
    assert set(report["products"][0]["predicted"][0]) == {"name", "css", "hex", "share"}
    markdown = (out / "colors.md").read_text()
    assert "| colour | products | top-1 | top-2 |" in markdown and "| black | 1 |" in markdown


def test_eval_colors_missing_image_is_partial(tmp_path: Path, capsys) -> None:
    feed = _tiny_feed(tmp_path, missing=True)
    out = tmp_path / "report"
    assert main(["eval-colors", "--feed", str(feed), "--out", str(out), "--no-progress"]) == 3
    assert "1 unreadable image" in capsys.readouterr().out
    assert json.loads((out / "colors.json").read_text())["skipped"] == {"unreadable image": 1}


def test_eval_colors_without_labelled_products_fails(tmp_path: Path, capsys) -> None:
    feed = tmp_path / "catalog.jsonl"
    feed.write_text(json.dumps({"sku": "1", "color": "Birch", "image": "x.png"}) + "\n")
    assert main(["eval-colors", "--feed", str(feed), "--out", str(tmp_path / "r")]) == 1
    assert "names exactly one basic colour" in capsys.readouterr().err


def test_real_catalog_cutouts(sample_dir: Path, tmp_path: Path) -> None:
    """Five products of each colour from the IKEA catalog (57 in all), cut out and scored."""
    items, products = read_color_items(sample_dir / "catalog.jsonl")
    assert products == 2187 and len(items) == 1347
    chosen: dict[str, list] = {}
    for item in items:
        if len(chosen.setdefault(item.expected, [])) < 5:
            chosen[item.expected].append(item)
    feed = tmp_path / "feed.jsonl"
    rows = [
        {"sku": i.sku, "color": i.color_text, "image": i.image} for v in chosen.values() for i in v
    ]
    feed.write_text("\n".join(json.dumps(r) for r in rows))
    run = eval_colors_command(feed, tmp_path / "out", options=ColorEvalOptions(progress=False))
    scores = run.scores
    assert scores.products == len(rows) == 57
    assert scores.top1 >= 0.65 and scores.top2 >= 0.8 and scores.macro_top1 >= 0.6
