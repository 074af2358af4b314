"""API keys on SQLite and PostgreSQL: hashed at rest, shown once, scoped, revocable at once."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from merchant.errors import Forbidden, Unauthorized
from merchant.keys import (
    KeyScope,
    authenticate,
    create_key,
    hash_secret,
    list_keys,
    parse_key,
    revoke_key,
    verify_secret,
)
from merchant.tables import ApiKey
from search.errors import InvalidInput, NotFound


def test_key_is_stored_as_a_salted_hash_only(session: Session) -> None:
    created = create_key(session=session, merchant="acme", label="shop front")
    prefix, secret = parse_key(created.key)
    assert created.key.startswith(f"rl_{prefix}_") and prefix == created.info.prefix
    row = session.scalars(select(ApiKey).where(ApiKey.prefix == prefix)).one()
    assert secret not in row.key_hash and created.key not in row.key_hash
    assert row.key_hash.startswith("hmac-sha256$")
    assert verify_secret(secret, row.key_hash)
    assert not verify_secret(secret + "x", row.key_hash)
    other = create_key(session=session, merchant="acme")
    assert other.info.prefix != prefix and other.key != created.key
    assert hash_secret(secret) != hash_secret(secret), "a fresh salt each time"


def test_authenticate_gives_the_key_scope(session: Session) -> None:
    merchant = create_key(session=session, merchant="acme")
    admin = create_key(session=session, merchant=None, is_admin=True)
    scope = authenticate(session=session, key=merchant.key)
    assert scope == KeyScope(merchant.info.id, merchant.info.prefix, "acme", False)
    assert authenticate(session=session, key=admin.key).is_admin
    row = session.get(ApiKey, merchant.info.id)
    assert row is not None and row.last_used_at is not None


@pytest.mark.parametrize(
    "mangle",
    [
        lambda k: "",
        lambda k: "not-a-key",
        lambda k: k[:-1] + ("A" if k[-1] != "A" else "B"),  # wrong secret
        lambda k: "rl_000000000000_" + k.split("_", 2)[2],  # unknown prefix
        lambda k: k.replace("rl_", "xx_", 1),
        lambda k: k[:20],
    ],
)
def test_wrong_keys_are_unauthorized(session: Session, mangle: Callable[[str], str]) -> None:
    created = create_key(session=session, merchant="acme")
    with pytest.raises(Unauthorized):
        authenticate(session=session, key=mangle(created.key))


def test_revocation_takes_effect_on_the_next_lookup(
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory() as session, session.begin():
        created = create_key(session=session, merchant="acme")
    with session_factory() as session, session.begin():
        assert authenticate(session=session, key=created.key).merchant == "acme"
    with session_factory() as session, session.begin():
        first = revoke_key(session=session, prefix=created.info.prefix)
    assert first.revoked_at is not None and not first.active
    with session_factory() as session, session.begin(), pytest.raises(Unauthorized):
        authenticate(session=session, key=created.key)
    with session_factory() as session, session.begin():  # twice: the first time stays
        again = revoke_key(session=session, prefix=created.key)
    assert again.revoked_at == first.revoked_at


def test_list_and_revoke_unknown(session: Session) -> None:
    a = create_key(session=session, merchant="acme", label="a")
    b = create_key(session=session, merchant=None, is_admin=True)
    revoke_key(session=session, prefix=a.info.prefix)
    every = list_keys(session=session)
    assert [k.prefix for k in every] == [a.info.prefix, b.info.prefix]
    assert [k.prefix for k in list_keys(session=session, include_revoked=False)] == [b.info.prefix]
    with pytest.raises(NotFound):
        revoke_key(session=session, prefix="ffffffffffff")


def test_a_merchant_key_needs_a_merchant(session: Session) -> None:
    with pytest.raises(InvalidInput):
        create_key(session=session, merchant=None)
    with pytest.raises(InvalidInput):
        create_key(session=session, merchant="  ")


def test_last_used_is_written_at_most_once_a_minute(session: Session) -> None:
    created = create_key(session=session, merchant="acme")
    authenticate(session=session, key=created.key)
    row = session.get(ApiKey, created.info.id)
    assert row is not None and row.last_used_at is not None
    first = row.last_used_at
    authenticate(session=session, key=created.key)
    assert row.last_used_at == first
    row.last_used_at = first - timedelta(minutes=5)
    authenticate(session=session, key=created.key)
    assert row.last_used_at > first - timedelta(minutes=5)


def test_scope_rules() -> None:
    merchant = KeyScope(1, "p", "acme", False)
    admin = KeyScope(2, "q", None, True)
    assert merchant.merchant_filter(None) == "acme"
    assert merchant.merchant_filter("acme") == "acme"
    with pytest.raises(Forbidden):
        merchant.merchant_filter("birch")
    assert admin.merchant_filter(None) is None and admin.merchant_filter("birch") == "birch"
    merchant.check_merchant("acme")
    for other in ("birch", None):
        with pytest.raises(Forbidden):
            merchant.check_merchant(other)
    admin.check_merchant(None)
    with pytest.raises(Forbidden):
        merchant.require_admin()
    admin.require_admin()
