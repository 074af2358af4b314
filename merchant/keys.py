"""API keys: created with a random secret shown once, stored as a salted hash, revocable.

A key reads `rl_<prefix>_<secret>`: `prefix` (12 hex digits) is stored in clear and finds
the row, `secret` (43 url-safe characters, 256 random bits) is stored only as
`hmac-sha256$<salt>$<digest>` with a per-key salt and compared in constant time. The secret
is random, not a password, so a slow KDF (scrypt) would add CPU per request and no
protection: nobody can brute-force 256 bits.

Every request looks the key up again, so a revocation takes effect on the next request.
None of these functions commits: the caller owns the transaction.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from merchant.errors import Forbidden, Unauthorized
from merchant.tables import ApiKey
from search.db import utcnow
from search.errors import InvalidInput, NotFound

log = logging.getLogger(__name__)

KEY_MARK = "rl"
PREFIX_HEX = 12
HASH_SCHEME = "hmac-sha256"
TOUCH_INTERVAL = timedelta(seconds=60)  # last_used_at is written at most this often per key
_PREFIX_RE = re.compile(rf"^[0-9a-f]{{{PREFIX_HEX}}}$")
_SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{32,128}$")
_DUMMY_HASH = f"{HASH_SCHEME}${'0' * 32}${'0' * 64}"


@dataclass(frozen=True)
class KeyInfo:
    """What is known of a key once created: everything except its secret."""

    id: int
    prefix: str
    merchant: str | None
    is_admin: bool
    label: str | None
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class CreatedKey:
    """A new key: `key` is the full secret string, shown once and never stored."""

    key: str
    info: KeyInfo


@dataclass(frozen=True)
class KeyScope:
    """What an authenticated key may see: every merchant (admin) or its own merchant only."""

    key_id: int
    prefix: str
    merchant: str | None
    is_admin: bool

    def merchant_filter(self, requested: str | None = None) -> str | None:
        """The merchant a query is restricted to (None: every merchant, for an admin only).

        A merchant key asking for no merchant gets its own; asking for another one is
        `Forbidden`.
        """
        if self.is_admin:
            return requested
        if requested is None or requested == self.merchant:
            return self.merchant
        raise Forbidden(f"this key is limited to merchant {self.merchant!r}")

    def check_merchant(self, merchant: str | None) -> None:
        """Raise `Forbidden` unless this key may see data of `merchant` (e.g. a product's)."""
        if self.is_admin:
            return
        if merchant is None or merchant != self.merchant:
            raise Forbidden(f"this key is limited to merchant {self.merchant!r}")

    def require_admin(self) -> None:
        """Raise `Forbidden` unless this is an admin key."""
        if not self.is_admin:
            raise Forbidden("this action needs an admin key")


def _info(row: ApiKey) -> KeyInfo:
    return KeyInfo(
        id=row.id,
        prefix=row.prefix,
        merchant=row.merchant,
        is_admin=row.is_admin,
        label=row.label,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


def hash_secret(secret: str, salt: bytes | None = None) -> str:
    """`hmac-sha256$<salt hex>$<digest hex>` of `secret`, with a fresh salt unless given."""
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hmac.new(salt, secret.encode("utf-8"), hashlib.sha256).hexdigest()
    return f"{HASH_SCHEME}${salt.hex()}${digest}"


def verify_secret(secret: str, stored: str) -> bool:
    """True when `secret` hashes to `stored` (constant-time comparison)."""
    try:
        scheme, salt_hex, _ = stored.split("$")
        salt = bytes.fromhex(salt_hex)
    except ValueError:
        return False
    if scheme != HASH_SCHEME:
        return False
    return hmac.compare_digest(hash_secret(secret, salt).encode(), stored.encode())


def parse_key(key: str) -> tuple[str, str]:
    """(prefix, secret) of a key string; `Unauthorized` when it is not shaped like one."""
    mark, _, rest = key.strip().partition("_")
    prefix, _, secret = rest.partition("_")
    if mark != KEY_MARK or not _PREFIX_RE.match(prefix) or not _SECRET_RE.match(secret):
        raise Unauthorized("malformed API key")
    return prefix, secret


def _check_merchant_name(merchant: str | None, is_admin: bool) -> str | None:
    if merchant is not None:
        merchant = merchant.strip()
        if not merchant or len(merchant) > 256:
            raise InvalidInput("a merchant name is 1 to 256 characters")
    if merchant is None and not is_admin:
        raise InvalidInput("a merchant key needs a merchant (or make it an admin key)")
    return merchant


def create_key(
    *, session: Session, merchant: str | None, is_admin: bool = False, label: str | None = None
) -> CreatedKey:
    """A new key for `merchant` (or an admin key); the returned secret is not stored."""
    merchant = _check_merchant_name(merchant, is_admin)
    prefix = secrets.token_hex(PREFIX_HEX // 2)
    while session.scalar(select(ApiKey.id).where(ApiKey.prefix == prefix)) is not None:
        prefix = secrets.token_hex(PREFIX_HEX // 2)  # 48 bits: practically never taken
    secret = secrets.token_urlsafe(32)
    row = ApiKey(
        prefix=prefix,
        key_hash=hash_secret(secret),
        merchant=merchant,
        is_admin=is_admin,
        label=label,
    )
    session.add(row)
    session.flush()
    log.info(
        "created %s key %s for merchant %r", "admin" if is_admin else "merchant", prefix, merchant
    )
    return CreatedKey(key=f"{KEY_MARK}_{prefix}_{secret}", info=_info(row))


def list_keys(*, session: Session, include_revoked: bool = True) -> list[KeyInfo]:
    """Every key, oldest first (revoked ones too unless `include_revoked` is False)."""
    stmt = select(ApiKey).order_by(ApiKey.id)
    if not include_revoked:
        stmt = stmt.where(ApiKey.revoked_at.is_(None))
    return [_info(row) for row in session.scalars(stmt)]


def _key_prefix(prefix_or_key: str) -> str:
    text = prefix_or_key.strip()
    if text.startswith(f"{KEY_MARK}_"):
        text = text[len(KEY_MARK) + 1 :].partition("_")[0]
    return text


def revoke_key(*, session: Session, prefix: str) -> KeyInfo:
    """Revoke the key with this prefix (or given whole); `NotFound` when there is none.

    Revoking twice keeps the first revocation time.
    """
    row = session.scalars(select(ApiKey).where(ApiKey.prefix == _key_prefix(prefix))).first()
    if row is None:
        raise NotFound(f"no API key with prefix {prefix!r}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
        log.info("revoked key %s", row.prefix)
    return _info(row)


def authenticate(*, session: Session, key: str) -> KeyScope:
    """The scope of a valid, unrevoked key; `Unauthorized` otherwise.

    Records `last_used_at` (at most once a minute per key) in the caller's transaction.
    """
    prefix, secret = parse_key(key)
    row = session.scalars(select(ApiKey).where(ApiKey.prefix == prefix)).first()
    matches = verify_secret(secret, row.key_hash if row is not None else _DUMMY_HASH)
    if row is None or not matches:
        raise Unauthorized("unknown API key")
    if row.revoked_at is not None:
        raise Unauthorized("this API key has been revoked")
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at >= TOUCH_INTERVAL:
        row.last_used_at = now
        session.flush()
    return KeyScope(key_id=row.id, prefix=row.prefix, merchant=row.merchant, is_admin=row.is_admin)
