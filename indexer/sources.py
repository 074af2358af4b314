"""Catalog feeds: JSONL (one product a line) or CSV (header row, same field names).

Required fields: `sku` (a non-empty string; numbers are accepted and converted), `title`,
`category`, `image` (a path relative to the feed file, an absolute path, or an http(s) URL).
Optional: `price` (a number >= 0), `currency`, `color`, `description`, `merchant`,
`in_stock` (bool), `url` (an http(s) URL). Any other field is kept in `extra`. A null or
blank value counts as absent.

A bad line is reported with its 1-based line number and parsing goes on; a repeated sku keeps
the first line and reports the later ones. Only a feed that cannot be read at all raises
`FeedError`. Files are read as a stream, line by line.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from search.errors import FeedError
from search.fetch import URL_SCHEMES, is_url, url_scheme

REQUIRED_FIELDS = ("sku", "title", "category", "image")
OPTIONAL_FIELDS = ("price", "currency", "color", "description", "merchant", "in_stock", "url")
KNOWN_FIELDS = frozenset(REQUIRED_FIELDS + OPTIONAL_FIELDS)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
CSV_SUFFIXES = (".csv",)

FeedFormat = Literal["jsonl", "csv"]


def _check_http_url(value: str, name: str) -> str:
    if not is_url(value) or not urlsplit(value).netloc:
        raise ValueError(f"field {name!r}: expected an http(s) URL, got {value!r}")
    return value


def resolve_image_ref(ref: str, base_dir: Path | None) -> str:
    """An http(s) URL as given, or an absolute, normalised path (relative ones from `base_dir`).

    Raises `ValueError` for any other URL scheme, or a relative path without `base_dir`.
    """
    ref = ref.strip()
    scheme = url_scheme(ref)
    if scheme in URL_SCHEMES:
        return _check_http_url(ref, "image")
    if scheme is not None:
        raise ValueError(
            f"field 'image': unsupported scheme {scheme!r} in {ref!r}"
            " (use a file path or an http(s) URL)"
        )
    path = Path(ref)
    if path.is_absolute():
        return os.path.normpath(path)
    if base_dir is None:
        raise ValueError(f"field 'image': relative path {ref!r} needs the feed's directory")
    return os.path.normpath(Path(os.path.abspath(base_dir)) / path)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _number_to_sku(value: Any) -> Any:
    if isinstance(value, bool):
        return value  # rejected by the str field
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    return value


class FeedItem(BaseModel):
    """One valid feed product. `image` is the reference as given, `image_ref` it resolved.

    Built by the parsers with `context={"base_dir": <feed directory>}`; built directly, a
    relative `image` needs `image_ref` given too.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", str_strip_whitespace=True, allow_inf_nan=False
    )

    sku: str = Field(min_length=1, max_length=128)
    title: str = Field(min_length=1)
    category: str = Field(min_length=1, max_length=128)
    image: str = Field(min_length=1)
    image_ref: str = Field(default="", min_length=1, validate_default=True)
    price: float | None = Field(default=None, ge=0)
    currency: str | None = Field(default=None, max_length=16)
    color: str | None = None
    description: str | None = None
    merchant: str | None = Field(default=None, max_length=256)
    in_stock: bool | None = None
    url: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _prepare(cls, data: Any) -> Any:
        """A null or blank known field counts as absent; a numeric sku becomes text."""
        if not isinstance(data, Mapping):
            return data
        out = {k: v for k, v in data.items() if not (k in KNOWN_FIELDS and _blank(v))}
        if "sku" in out:
            out["sku"] = _number_to_sku(out["sku"])
        return out

    @field_validator("image_ref", mode="before")
    @classmethod
    def _resolve_image(cls, value: Any, info: ValidationInfo) -> Any:
        """Resolve `image` against the feed's directory (`context["base_dir"]`) unless given."""
        image = info.data.get("image")
        if not _blank(value) or not isinstance(image, str):
            return value  # a given image_ref, or an invalid image already reported
        return resolve_image_ref(image, (info.context or {}).get("base_dir"))

    @field_validator("price", mode="before")
    @classmethod
    def _no_bool_price(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("field 'price': expected a number, got a boolean")
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_http_url(value, "url")


@dataclass(frozen=True)
class FeedLineError:
    """A feed line that was skipped, and why."""

    line: int  # 1-based; a CSV record over several lines gives its last one
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class FeedParse:
    """The valid items of a feed, in feed order, and the lines that were skipped."""

    path: Path
    items: list[FeedItem] = field(default_factory=list)
    errors: list[FeedLineError] = field(default_factory=list)

    @property
    def skus(self) -> list[str]:
        return [item.sku for item in self.items]


def _error_reason(error: ErrorDetails) -> str:
    name = ".".join(str(part) for part in error["loc"])
    if error["type"] == "missing":
        return f"missing required field {name!r}"
    if error["type"] == "value_error" and "error" in error.get("ctx", {}):
        return str(error["ctx"]["error"])
    prefix = f"field {name!r}: " if name else ""
    return f"{prefix}{error['msg']}"


def validation_reason(exc: ValidationError) -> str:
    """One readable line for all the errors of a `FeedItem` validation."""
    errors = exc.errors(include_url=False)
    if any(error["loc"][:1] == ("image",) for error in errors):  # image_ref follows from it
        errors = [error for error in errors if error["loc"][:1] != ("image_ref",)]
    return "; ".join(_error_reason(error) for error in errors)


def item_from_record(record: Mapping[str, Any], base_dir: Path) -> FeedItem:
    """Validate one feed record; unknown fields go to `extra`. Raises `ValueError` (the reason)."""
    known = {k: v for k, v in record.items() if k in KNOWN_FIELDS}
    extra = {k: v for k, v in record.items() if k not in KNOWN_FIELDS and not _blank(v)}
    try:
        return FeedItem.model_validate({**known, "extra": extra}, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ValueError(validation_reason(exc)) from exc


def feed_format(path: Path) -> FeedFormat:
    """JSONL or CSV, from the file name; `FeedError` for anything else."""
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in CSV_SUFFIXES:
        return "csv"
    known = ", ".join(JSONL_SUFFIXES + CSV_SUFFIXES)
    raise FeedError(f"unsupported feed format {suffix or '(none)'!r} for {path}: use {known}")


# --- JSONL -----------------------------------------------------------------------------------

Record = tuple[int, dict[str, Any] | str]  # (line, record) or (line, reason it is bad)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json_record(raw: bytes) -> dict[str, Any] | str | None:
    """The object on one JSONL line, the reason it is bad, or None for a blank line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not valid UTF-8 (byte {exc.start + 1})"
    text = text.lstrip("\ufeff").strip()
    if not text:
        return None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        return f"invalid JSON: {exc.msg} (column {exc.colno})"
    except ValueError as exc:
        return f"invalid JSON: {exc}"
    if not isinstance(value, dict):
        return f"expected a JSON object, got {type(value).__name__}"
    return value


def _jsonl_records(path: Path) -> Iterator[Record]:
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            record = _json_record(raw)
            if record is not None:
                yield number, record


# --- CSV -------------------------------------------------------------------------------------


def _csv_header(reader: csv.DictReader[str], path: Path) -> None:
    names = [name.strip() for name in reader.fieldnames or []]
    if not names:
        raise FeedError(f"CSV feed {path} has no header row")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise FeedError(f"CSV feed {path}: repeated column(s) {', '.join(duplicates)}")
    missing = [name for name in REQUIRED_FIELDS if name not in names]
    if missing:
        raise FeedError(f"CSV feed {path}: header lacks required column(s) {', '.join(missing)}")
    reader.fieldnames = names


def _csv_record(row: dict[str | Any, Any]) -> dict[str, Any] | str | None:
    if None in row:
        return "more fields than the header has columns"
    if all(_blank(value) for value in row.values()):
        return None
    return {key: value for key, value in row.items() if value is not None}


def _csv_records(path: Path) -> Iterator[Record]:
    with path.open(newline="", encoding="utf-8-sig") as text:
        reader = csv.DictReader(text)
        try:
            _csv_header(reader, path)
            yield from _csv_rows(reader)
        except UnicodeDecodeError as exc:
            raise FeedError(
                f"CSV feed {path} is not valid UTF-8 near line {reader.line_num + 1}"
            ) from exc


def _csv_rows(reader: csv.DictReader[str]) -> Iterator[Record]:
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield reader.line_num, f"malformed CSV: {exc}"
            continue
        record = _csv_record(row)
        if record is not None:
            yield reader.line_num, record


# --- the feed --------------------------------------------------------------------------------


def _records(path: Path, fmt: FeedFormat) -> Iterator[Record]:
    try:
        yield from (_jsonl_records(path) if fmt == "jsonl" else _csv_records(path))
    except OSError as exc:
        raise FeedError(f"cannot read feed {path}: {exc.strerror or exc}") from exc


def iter_feed(path: Path) -> Iterator[FeedItem | FeedLineError]:
    """Stream a feed: each valid item, or the error of each bad line, in file order.

    Raises `FeedError` at once for a missing file, a directory or an unknown format, and
    while iterating if the file cannot be read.
    """
    path = Path(path)
    fmt = feed_format(path)
    if not path.is_file():
        raise FeedError(f"cannot read feed {path}: no such file")
    return _items(path, fmt)


def _items(path: Path, fmt: FeedFormat) -> Iterator[FeedItem | FeedLineError]:
    base_dir = Path(os.path.abspath(path)).parent
    first_line: dict[str, int] = {}
    for line, record in _records(path, fmt):
        if isinstance(record, str):
            yield FeedLineError(line, record)
            continue
        try:
            item = item_from_record(record, base_dir)
        except ValueError as exc:
            yield FeedLineError(line, str(exc))
            continue
        if item.sku in first_line:
            yield FeedLineError(
                line, f"duplicate sku {item.sku!r} (first on line {first_line[item.sku]})"
            )
            continue
        first_line[item.sku] = line
        yield item


def parse_feed(path: Path) -> FeedParse:
    """Read a whole feed: its valid items and the errors of its bad lines."""
    result = FeedParse(path=Path(path))
    for entry in iter_feed(path):
        if isinstance(entry, FeedLineError):
            result.errors.append(entry)
        else:
            result.items.append(entry)
    return result
