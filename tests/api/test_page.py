"""The web page in a real browser: headless Chromium (Debian's package, see
scripts/install-browser.sh) driven by Playwright, against uvicorn on 127.0.0.1 serving the
small real catalog. Upload a room photo, see the outlines, click one, see its products;
drag a box, see the products of that area; the scene panel beside them, and its COCO
download."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from search.scene import PHRASES  # the page writes a relation in the same words

if TYPE_CHECKING:
    from playwright.sync_api import Page

    from tests.api.conftest import SmallCatalog

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path(os.environ.get("ROOMLENS_SCREENSHOT", "/tmp/roomlens-page.png"))
SEARCH_TIMEOUT_MS = 120_000  # a room photo on a busy 2-core machine


@pytest.fixture(scope="module")
def page() -> Iterator[Page]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: run scripts/install-browser.sh")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        yield page
        browser.close()
        assert not errors, f"JavaScript errors on the page: {errors}"


def _point_inside(page: Page, index: int) -> dict[str, float]:
    """Client coordinates of a point inside instance `index`'s outline (as the page sees it)."""
    point: dict[str, Any] | None = page.evaluate(
        """(i) => {
            const [x0, y0, x1, y1] = instances[i].box;
            const r = canvas.getBoundingClientRect();
            for (let fy = 0.5; fy < 1; fy += 0.05) for (let sign of [1, -1]) {
              const y = y0 + (y1 - y0) * (sign > 0 ? fy : 1 - fy);
              for (let fx = 0.5; fx < 1; fx += 0.05) for (let sx of [1, -1]) {
                const x = x0 + (x1 - x0) * (sx > 0 ? fx : 1 - fx);
                if (instanceAt(x, y) === i) return {
                  x: r.left + x * r.width / canvas.width, y: r.top + y * r.height / canvas.height,
                };
              }
            }
            return null;
        }""",
        index,
    )
    assert point is not None, f"no point of instance {index} selects it"
    return point


def test_upload_outline_click_and_draw(
    page: Page, live_server: str, small_catalog: SmallCatalog, sample_dir: Path
) -> None:
    page.goto(live_server + "/")
    page.wait_for_selector("#categories input[type=checkbox]")  # filters loaded from the API
    photo = small_catalog.room_photo(sample_dir)
    page.set_input_files("#file", str(photo))

    # outlines: the instance list fills and the canvas holds the photo with the masks drawn
    page.wait_for_selector("#instances li", timeout=SEARCH_TIMEOUT_MS)
    count = page.locator("#instances li").count()
    assert count >= 1
    assert page.get_attribute("#canvas", "data-outlines") == str(count)
    size = page.evaluate("[canvas.width, canvas.height]")
    from PIL import Image

    assert tuple(size) == Image.open(photo).size
    painted = page.evaluate(
        "(() => { const d = ctx.getImageData(0, 0, canvas.width, canvas.height).data;"
        " let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] + d[i+1] + d[i+2]) n++;"
        " return n / (d.length / 4); })()"
    )
    assert painted > 0.5, "the photo is drawn on the canvas"

    # click inside the last instance's outline on the canvas: its products are listed
    last = count - 1
    point = _point_inside(page, last)
    page.mouse.click(point["x"], point["y"])
    page.wait_for_selector(f"#instances li:nth-child({last + 1}).active")
    cards = page.locator("#products .product")
    assert cards.count() >= 1
    first = cards.first
    assert first.locator("img").get_attribute("src", timeout=5000).startswith("/v1/images/")
    assert first.locator(".title").inner_text().strip()
    assert "EUR" in first.locator(".price").inner_text()
    assert "score" in first.locator(".score").inner_text()
    page.wait_for_function(  # the product images load
        "[...document.querySelectorAll('#products img')]"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )

    # drag a box: the area is searched and its products listed
    box = page.locator("#canvas").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.3)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.6, steps=8)
    page.mouse.up()
    page.wait_for_selector(
        "#instances li.active:has-text('the area you drew')", timeout=SEARCH_TIMEOUT_MS
    )
    assert page.locator("#products .product").count() >= 1
    assert page.locator("#instances li").count() == count + 1
    page.screenshot(path=str(SCREENSHOT), full_page=True)


def test_filters_are_sent_with_the_search(
    page: Page, live_server: str, small_catalog: SmallCatalog
) -> None:
    """After the first test's photo: tick "table", cap the price, keep in-stock only."""
    page.check("#categories input[value='table']")
    page.fill("#max-price", "300")
    page.check("#in-stock")
    with page.expect_response("**/v1/search", timeout=SEARCH_TIMEOUT_MS) as answer:
        page.click("#apply")
    assert answer.value.ok
    page.wait_for_selector("#instances li.active", timeout=SEARCH_TIMEOUT_MS)
    feed = {p["sku"]: p for p in small_catalog.products}
    skus = page.eval_on_selector_all("#products .product", "els => els.map(e => e.dataset.sku)")
    for sku in skus:
        assert feed[sku]["category"] == "table" and feed[sku]["price"] <= 300
        assert feed[sku]["in_stock"]
    all_skus = page.evaluate("instances.flatMap(i => i.products.map(p => p.sku))")
    assert all_skus and all(feed[s]["category"] == "table" for s in all_skus)


def test_scene_panel_shows_counts_description_and_coco_download(
    page: Page, live_server: str, small_catalog: SmallCatalog, sample_dir: Path, tmp_path: Path
) -> None:
    """After a search the page asks /v1/segment for the same photo: the panel lists the
    counts, each object's colour swatches and relations in words, the description; the
    button downloads the photo's instances as COCO JSON."""
    page.goto(live_server + "/")
    photo = small_catalog.room_photo(sample_dir)
    with page.expect_response("**/v1/segment", timeout=SEARCH_TIMEOUT_MS) as answer:
        page.set_input_files("#file", str(photo))
    assert answer.value.ok
    body = answer.value.json()
    page.wait_for_selector("#scene-objects li.object", timeout=SEARCH_TIMEOUT_MS)
    assert page.is_visible("#scene")
    assert page.inner_text("#scene-description").strip() == body["description"]
    counts = page.locator("#scene-counts li.count")
    assert counts.count() == len(body["counts"]) >= 1
    first_label, first_count = next(iter(body["counts"].items()))
    assert counts.first.inner_text().split() == [str(first_count), *first_label.split()]
    objects = page.locator("#scene-objects li.object")
    assert objects.count() == len(body["instances"])
    coloured = [i for i in body["instances"] if i["colors"]]
    assert page.locator("#scene-objects .swatch").count() == sum(len(i["colors"]) for i in coloured)
    related = next((i for i in body["instances"] if i["relations"]), None)
    if related is not None:  # relations in words, naming the other object by its label
        rel = related["relations"][0]
        other = next(i for i in body["instances"] if i["id"] == rel["object"])
        words = page.locator(f"#scene-objects li.object[data-id='{related['id']}'] .relations li")
        assert f"{PHRASES[rel['predicate']]} the {other['label']}" in words.first.inner_text()

    button = page.locator("#download-coco")
    assert button.is_visible() and button.inner_text() == "Download COCO JSON"
    page.screenshot(path=str(SCREENSHOT.with_name(f"{SCREENSHOT.stem}-scene.png")), full_page=True)
    with page.expect_download(timeout=SEARCH_TIMEOUT_MS) as download:
        button.click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    from search.datasets import check_coco
    from search.masks import decode_rle

    doc = json.loads(saved.read_text())
    assert saved.name.endswith(".coco.json")
    assert check_coco(doc) == [] and len(doc["images"]) == 1
    masks = [decode_rle(i["mask"]["rle"]) for i in body["instances"]]
    assert len(doc["annotations"]) == sum(1 for m in masks if m.any())
