"""The merchant features' errors (the API maps them to 401 and 403 in api/errors.py)."""

from __future__ import annotations

from search.errors import RoomlensError


class Unauthorized(RoomlensError):
    """No API key, or one that is malformed, unknown or revoked."""

    code = "unauthorized"


class Forbidden(RoomlensError):
    """A valid API key asking for data or an action outside its scope."""

    code = "forbidden"
