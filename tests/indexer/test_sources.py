"""indexer.sources: JSONL and CSV catalog feeds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from indexer.sources import FeedItem, FeedLineError, iter_feed, parse_feed, resolve_image_ref
from search.errors import FeedError

GOOD = {"sku": "A-1", "title": "KLIPPAN Sofa", "category": "sofa", "image": "img/a.jpg"}


def write_jsonl(path: Path, *lines: Any) -> Path:
    """Dicts are written as JSON, strings as they are."""
    text = [line if isinstance(line, str) else json.dumps(line) for line in lines]
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path


def reasons(path: Path) -> dict[int, str]:
    return {error.line: error.reason for error in parse_feed(path).errors}


def test_good_feed(tmp_path: Path) -> None:
    full = {
        **GOOD,
        "sku": "B-2",
        "price": 199.5,
        "currency": "EUR",
        "color": "grey",
        "description": "Two seats.",
        "merchant": "ikea",
        "in_stock": False,
        "url": "https://shop.example/b-2",
        "size": "80 cm",
        "tags": ["x", "y"],
    }
    feed = write_jsonl(tmp_path / "feed.jsonl", GOOD, "", "   ", full)
    result = parse_feed(feed)
    assert result.errors == []
    assert result.skus == ["A-1", "B-2"]
    a, b = result.items
    assert a.image == "img/a.jpg"
    assert a.image_ref == str(tmp_path / "img" / "a.jpg")
    assert (a.price, a.currency, a.in_stock, a.extra) == (None, None, None, {})
    assert (b.price, b.currency, b.color, b.merchant, b.in_stock) == (
        199.5,
        "EUR",
        "grey",
        "ikea",
        False,
    )
    assert (b.description, b.url) == ("Two seats.", "https://shop.example/b-2")
    assert b.extra == {"size": "80 cm", "tags": ["x", "y"]}


def test_items_are_frozen(tmp_path: Path) -> None:
    [item] = parse_feed(write_jsonl(tmp_path / "f.jsonl", GOOD)).items
    with pytest.raises(ValueError):
        item.title = "changed"  # type: ignore[misc]


def test_numbers_and_blanks_are_normalised(tmp_path: Path) -> None:
    line = {
        **GOOD,
        "sku": 1234,
        "title": "  Padded  ",
        "price": "12",
        "color": "",
        "in_stock": "yes",
    }
    [item] = parse_feed(write_jsonl(tmp_path / "f.jsonl", line, {**GOOD, "sku": 77.0})).items[:1]
    assert (item.sku, item.title, item.price, item.color, item.in_stock) == (
        "1234",
        "Padded",
        12.0,
        None,
        True,
    )
    assert parse_feed(tmp_path / "f.jsonl").skus == ["1234", "77"]


def test_real_catalog(sample_dir: Path) -> None:
    result = parse_feed(sample_dir / "catalog.jsonl")
    assert len(result.items) == 2187
    assert result.errors == []
    first = result.items[0]
    assert first.image_ref == str(sample_dir / "images" / f"{first.sku}.jpg")
    assert {"product_type", "size"} <= set(first.extra)
    assert len(set(result.skus)) == 2187


def test_bad_lines_are_reported_and_parsing_goes_on(tmp_path: Path) -> None:
    feed = write_jsonl(
        tmp_path / "feed.jsonl",
        GOOD,  # 1
        '{"sku": "X", "title": ',  # 2
        "[1, 2]",  # 3
        {"title": "no sku", "category": "sofa", "image": "a.jpg"},  # 4
        {**GOOD, "sku": "A-1", "title": "again"},  # 5
        "",  # 6
        {**GOOD, "sku": "C", "price": -3},  # 7
        {**GOOD, "sku": "D", "price": "cheap"},  # 8
        {**GOOD, "sku": "E", "in_stock": "maybe"},  # 9
        {**GOOD, "sku": " "},  # 10
        {**GOOD, "sku": True},  # 11
        {**GOOD, "sku": "F", "title": None, "category": ""},  # 12
        {**GOOD, "sku": "G", "price": True},  # 13
        '{"sku": "H", "title": "t", "category": "c", "image": "a.jpg", "price": NaN}',  # 14
        {**GOOD, "sku": "I", "url": "javascript:alert(1)"},  # 15
        {**GOOD, "sku": "J", "image": 5},  # 16
        {**GOOD, "sku": "K"},  # 17
    )
    result = parse_feed(feed)
    assert result.skus == ["A-1", "K"]
    got = reasons(feed)
    assert sorted(got) == [2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
    assert got[2].startswith("invalid JSON")
    assert got[3] == "expected a JSON object, got list"
    assert got[4] == "missing required field 'sku'"
    assert got[5] == "duplicate sku 'A-1' (first on line 1)"
    assert "field 'price'" in got[7] and "greater than or equal to 0" in got[7]
    assert "field 'price'" in got[8]
    assert "field 'in_stock'" in got[9]
    assert got[10] == "missing required field 'sku'"
    assert got[11].startswith("field 'sku'")
    assert got[12] == "missing required field 'title'; missing required field 'category'"
    assert got[13] == "field 'price': expected a number, got a boolean"
    assert got[14] == "invalid JSON: NaN is not valid JSON"
    assert got[15].startswith("field 'url': expected an http(s) URL")
    assert got[16] == "field 'image': Input should be a valid string"


def test_invalid_utf8_line(tmp_path: Path) -> None:
    feed = tmp_path / "f.jsonl"
    feed.write_bytes(json.dumps(GOOD).encode() + b'\n{"sku": "\xff"}\n')
    assert reasons(feed) == {2: "not valid UTF-8 (byte 10)"}


def test_byte_order_mark(tmp_path: Path) -> None:
    feed = tmp_path / "f.jsonl"
    feed.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n")
    assert parse_feed(feed).skus == ["A-1"]


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("img/a.jpg", "{feed}/img/a.jpg"),
        ("./img/../b.jpg", "{feed}/b.jpg"),
        ("/srv/images/c.jpg", "/srv/images/c.jpg"),
        ("http://cdn.example/d.jpg", "http://cdn.example/d.jpg"),
        ("HTTPS://cdn.example/e.jpg?w=500", "HTTPS://cdn.example/e.jpg?w=500"),
    ],
)
def test_image_refs(tmp_path: Path, image: str, expected: str) -> None:
    [item] = parse_feed(write_jsonl(tmp_path / "f.jsonl", {**GOOD, "image": image})).items
    assert item.image == image
    assert item.image_ref == expected.format(feed=tmp_path)


@pytest.mark.parametrize(
    "image",
    ["ftp://host/a.jpg", "file:///etc/passwd", "data:image/png;base64,AAAA", "s3://b/k.jpg"],
)
def test_other_schemes_are_refused(tmp_path: Path, image: str) -> None:
    feed = write_jsonl(tmp_path / "f.jsonl", {**GOOD, "image": image})
    [reason] = reasons(feed).values()
    assert reason.startswith("field 'image': unsupported scheme")


def test_url_without_host_is_refused(tmp_path: Path) -> None:
    feed = write_jsonl(tmp_path / "f.jsonl", {**GOOD, "image": "https:///a.jpg"})
    assert reasons(feed) == {1: "field 'image': expected an http(s) URL, got 'https:///a.jpg'"}


def test_feed_cannot_inject_image_ref(tmp_path: Path) -> None:
    feed = write_jsonl(tmp_path / "f.jsonl", {**GOOD, "image_ref": "/etc/passwd"})
    [item] = parse_feed(feed).items
    assert item.image_ref == str(tmp_path / "img" / "a.jpg")
    assert item.extra == {"image_ref": "/etc/passwd"}


def test_feed_item_built_directly() -> None:
    item = FeedItem(sku="S", title="T", category="c", image="/abs/x.jpg")
    assert item.image_ref == "/abs/x.jpg"
    with pytest.raises(ValueError, match="needs the feed's directory"):
        FeedItem(sku="S", title="T", category="c", image="rel/x.jpg")
    assert resolve_image_ref("rel/x.jpg", Path("/base")) == "/base/rel/x.jpg"


CSV_TEXT = """sku,title,category,image,price,in_stock,size
A-1,KLIPPAN Sofa,sofa,img/a.jpg,199.50,true,80 cm
B-2,"POÄNG, armchair",armchair,https://cdn.example/b.jpg,,0,
,,,,,,
C-3,No image,table,,10,,
D-4,Bad price,table,d.jpg,-1,,
A-1,Duplicate,sofa,a.jpg,,,
E-5,"Two
lines",bed,/abs/e.jpg,5,no,XL
F-6,Too many,bed,f.jpg,1,yes,S,extra
"""


def test_csv_feed(tmp_path: Path) -> None:
    feed = tmp_path / "feed.csv"
    feed.write_text(CSV_TEXT, encoding="utf-8")
    result = parse_feed(feed)
    assert result.skus == ["A-1", "B-2", "E-5"]
    a, b, e = result.items
    assert (a.price, a.in_stock, a.extra, a.image_ref) == (
        199.5,
        True,
        {"size": "80 cm"},
        str(tmp_path / "img/a.jpg"),
    )
    assert (b.title, b.price, b.in_stock, b.extra, b.image_ref) == (
        "POÄNG, armchair",
        None,
        False,
        {},
        "https://cdn.example/b.jpg",
    )
    assert (e.title, e.in_stock, e.image_ref) == ("Two\nlines", False, "/abs/e.jpg")
    assert [(err.line, err.reason) for err in result.errors] == [
        (5, "missing required field 'image'"),
        (6, "field 'price': Input should be greater than or equal to 0"),
        (7, "duplicate sku 'A-1' (first on line 2)"),
        (10, "more fields than the header has columns"),
    ]


def test_csv_header_must_have_the_required_columns(tmp_path: Path) -> None:
    feed = tmp_path / "feed.csv"
    feed.write_text("sku,title,image\nA,t,a.jpg\n", encoding="utf-8")
    with pytest.raises(FeedError, match="category"):
        parse_feed(feed)
    feed.write_text("", encoding="utf-8")
    with pytest.raises(FeedError, match="no header"):
        parse_feed(feed)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FeedError, match="cannot read feed"):
        parse_feed(tmp_path / "nope.jsonl")
    with pytest.raises(FeedError, match="cannot read feed"):
        parse_feed(tmp_path / "nope.csv")


def test_directory_and_unknown_format(tmp_path: Path) -> None:
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(FeedError):
        parse_feed(tmp_path / "dir.jsonl")
    (tmp_path / "feed.xml").write_text("<feed/>", encoding="utf-8")
    with pytest.raises(FeedError, match="unsupported feed format"):
        parse_feed(tmp_path / "feed.xml")


def test_iter_feed_streams(tmp_path: Path) -> None:
    feed = write_jsonl(tmp_path / "f.jsonl", GOOD, "oops", {**GOOD, "sku": "B"})
    entries = iter_feed(feed)
    first = next(entries)
    assert isinstance(first, FeedItem) and first.sku == "A-1"
    assert isinstance(next(entries), FeedLineError)
    assert [type(e).__name__ for e in entries] == ["FeedItem"]


def test_empty_feed(tmp_path: Path) -> None:
    feed = tmp_path / "empty.jsonl"
    feed.write_text("", encoding="utf-8")
    result = parse_feed(feed)
    assert (result.items, result.errors) == ([], [])
