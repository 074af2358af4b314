"""The photo of an image route: the uploaded `image` file or the bytes at `image_url` (fetch
policy, byte and pixel caps from settings), decoded upright. `/v1/search` and `/v1/segment`
read their photo through these."""

from __future__ import annotations

from functools import partial
from typing import Annotated

import anyio
from fastapi import File, UploadFile
from fastapi.exceptions import RequestValidationError
from PIL import Image

from api.state import AppState
from search.errors import ImageTooLarge
from search.images import decode_image
from search.timing import Timer

PhotoFile = Annotated[
    UploadFile | None,
    File(description="a JPEG, PNG or WebP room photo; give either this or `image_url`"),
]


async def photo_bytes(
    state: AppState, image_url: str | None, image: UploadFile | None, timer: Timer
) -> bytes:
    """The uploaded file or the bytes at `image_url` (exactly one must be given)."""
    if (image is None) == (image_url is None):
        raise RequestValidationError(
            [
                {
                    "type": "missing" if image is None else "value_error",
                    "loc": ("body", "image"),
                    "msg": "give either an image file or an image_url, not both",
                }
            ]
        )
    if image_url is not None:
        with timer.stage("fetch"):
            fetched = await anyio.to_thread.run_sync(state.fetcher.fetch_url, image_url)
            assert fetched.data is not None  # no stamp sent, so never "not modified"
            return fetched.data
    assert image is not None
    limit = state.settings.api.max_upload_bytes
    data = await image.read(limit + 1)
    if len(data) > limit:
        raise ImageTooLarge(f"the upload is over the limit of {limit} bytes")
    return data


async def decode_photo(state: AppState, data: bytes, timer: Timer) -> Image.Image:
    """The photo's bytes decoded upright, within the API's byte and pixel caps."""
    api = state.settings.api
    with timer.stage("decode"):
        return await anyio.to_thread.run_sync(
            partial(decode_image, data, max_bytes=api.max_upload_bytes, max_pixels=api.max_pixels)
        )


def photo_name(image_url: str | None, image: UploadFile | None) -> str:
    """What names the photo in a data set: its URL, else the upload's file name."""
    if image_url is not None:
        return image_url
    return (image.filename if image is not None else None) or "photo"
