"""Typed domain errors. The API maps each one to an HTTP status in one place (api/errors.py)."""

from __future__ import annotations


class RoomlensError(Exception):
    """Base of every error roomlens raises on purpose."""

    code = "roomlens_error"


class InvalidInput(RoomlensError):
    """A request or argument that can never succeed as given."""

    code = "invalid_input"


class InvalidImage(InvalidInput):
    """Bytes that are not a readable image (truncated, corrupt, empty)."""

    code = "invalid_image"


class UnsupportedImageType(InvalidInput):
    """An image in a format roomlens does not accept."""

    code = "unsupported_image_type"


class ImageTooLarge(InvalidInput):
    """An upload over the byte cap or the pixel cap."""

    code = "image_too_large"


class InvalidBox(InvalidInput):
    """A box prompt that is not `x0,y0,x1,y1` with x1 > x0 and y1 > y0, or that has no
    pixel inside the photo."""

    code = "invalid_box"


class FetchError(InvalidInput):
    """An image URL or file that could not be read (unreachable, error status, too slow);
    the message says why."""

    code = "image_fetch_failed"


class FetchRefused(FetchError):
    """A URL the fetcher will not connect to: a non-public address not on the allow-list,
    or a scheme other than http(s)."""

    code = "url_refused"


class FetchedTooLarge(FetchError, ImageTooLarge):
    """A fetched image over the byte cap."""

    code = "image_too_large"


class FetchedNotAnImage(FetchError, UnsupportedImageType):
    """A fetched body whose content type is not an accepted image type."""

    code = "unsupported_image_type"


class FeedError(InvalidInput):
    """A catalog feed that cannot be read at all (missing file, wrong format)."""

    code = "feed_error"


class NotFound(RoomlensError):
    code = "not_found"


class ProductNotFound(NotFound):
    code = "product_not_found"


class IndexNotReady(RoomlensError):
    """No index has been built yet, or it could not be loaded."""

    code = "index_not_ready"


class ModelMismatch(RoomlensError):
    """An index built with another embedder than the configured one."""

    code = "model_mismatch"


class ModelUnavailable(RoomlensError):
    """Model weights that are missing or cannot be loaded."""

    code = "model_unavailable"


class IndexerBusy(RoomlensError):
    """Another indexer run holds the lock."""

    code = "indexer_busy"
