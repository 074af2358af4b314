"""The admin API's authentication: `AdminKeyDep` (any valid key) and `SuperKeyDep` (admin).

The key comes as `Authorization: Bearer <key>` or `X-API-Key: <key>`. It is checked against
the database on every request, so a revoked key stops working at once.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from api.deps import StateDep
from merchant.errors import Unauthorized
from merchant.keys import KeyScope, authenticate

bearer = HTTPBearer(auto_error=False, description="an API key: `Bearer rl_...`")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key")


def get_key_scope(
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    header_key: Annotated[str | None, Depends(api_key_header)],
) -> KeyScope:
    """The scope of the request's API key; `Unauthorized` (401) without a valid one."""
    key = credentials.credentials if credentials is not None else header_key
    if not key:
        raise Unauthorized("an API key is required: `Authorization: Bearer <key>` or X-API-Key")
    with state.session_factory() as session, session.begin():
        return authenticate(session=session, key=key)


AdminKeyDep = Annotated[KeyScope, Depends(get_key_scope)]


def require_admin(scope: AdminKeyDep) -> KeyScope:
    """The scope of an admin key; `Forbidden` (403) for a merchant key."""
    scope.require_admin()
    return scope


SuperKeyDep = Annotated[KeyScope, Depends(require_admin)]
