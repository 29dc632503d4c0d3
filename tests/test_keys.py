"""API keys over their life: created, listed, used, rotated, revoked, expired, adopted.

Every test runs on SQLite and on PostgreSQL (the ``database_url`` fixture), on a clock the
test moves by hand.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from app.store import repositories
from app.store.db import Database
from app.store.repositories import ApiKeyInfo, ApiKeyStore

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
# A bootstrap key as an operator would put it in the environment.
GIVEN = "mq_boot01_" + "s3cr3t-" * 6


@dataclass
class Clock:
    now: datetime = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def keys(database_url: str, clock: Clock) -> AsyncIterator[ApiKeyStore]:
    async with Database.upgraded(database_url) as db:
        yield ApiKeyStore(db, clock=clock)


def key_id(key: str) -> str:
    return key.split("_")[1]


async def info(keys: ApiKeyStore, wanted: str) -> ApiKeyInfo:
    return next(i for i in await keys.list() if i.id == wanted)


async def test_create_then_list_shows_everything_but_the_secret(
    keys: ApiKeyStore, clock: Clock
) -> None:
    cms = await keys.create("cms-prod", ["cms"])
    clock.advance(minutes=1)
    month = START + timedelta(days=30)
    admin = await keys.create("ops", ["admin", "cms", "admin"], expires_at=month)
    assert cms.startswith("mq_") and cms != admin

    listed = await keys.list()
    assert [i.id for i in listed] == [key_id(cms), key_id(admin)]  # oldest first
    ops = listed[1]
    assert ops == ApiKeyInfo(
        id=key_id(admin),
        name="ops",
        scopes=("admin", "cms"),
        created_at=START + timedelta(minutes=1),
        expires_at=month,
        last_used_at=None,
        revoked=False,
    )
    assert ops.status(START) == "active" and (await info(keys, key_id(cms))).expires_at is None
    # Nothing in what is listed could be used to authenticate.
    assert {f.name for f in dataclasses.fields(ApiKeyInfo)} == {
        "id", "name", "scopes", "created_at", "expires_at", "last_used_at", "revoked"
    }  # fmt: skip
    assert all(admin.split("_", 2)[2] not in repr(i) for i in listed)
    assert await keys.count() == 2


async def test_create_refuses_bad_scopes_and_expiries(keys: ApiKeyStore) -> None:
    with pytest.raises(ValueError, match="scopes"):
        await keys.create("x", ["root"])
    with pytest.raises(ValueError, match="scopes"):
        await keys.create("x", [])
    with pytest.raises(ValueError, match="timezone"):
        await keys.create("x", ["cms"], expires_at=datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="future"):
        await keys.create("x", ["cms"], expires_at=START)
    assert await keys.count() == 0


async def test_an_expiry_in_another_zone_is_kept_as_the_same_moment(keys: ApiKeyStore) -> None:
    from zoneinfo import ZoneInfo

    moment = datetime(2027, 1, 1, 9, 0, tzinfo=ZoneInfo("America/New_York"))
    key = await keys.create("x", ["cms"], expires_at=moment)
    assert (await info(keys, key_id(key))).expires_at == moment


async def test_a_key_stops_working_when_it_expires(keys: ApiKeyStore, clock: Clock) -> None:
    key = await keys.create("short", ["cms"], expires_at=START + timedelta(hours=1))
    clock.advance(minutes=59)
    assert await keys.verify(key) == ("short", frozenset({"cms"}))
    clock.advance(minutes=1)
    assert await keys.verify(key) is None  # at the expiry moment itself: expired
    assert (await info(keys, key_id(key))).status(clock.now) == "expired"


async def test_revoke(keys: ApiKeyStore) -> None:
    key = await keys.create("gone", ["marketer"])
    other = await keys.create("stays", ["marketer"])
    assert await keys.verify(key) is not None
    assert await keys.revoke(key_id(key)) is True
    assert await keys.verify(key) is None
    assert await keys.verify(other) == ("stays", frozenset({"marketer"}))
    gone = await info(keys, key_id(key))
    assert gone.revoked and gone.status() == "revoked"
    assert await keys.revoke(key_id(key)) is True  # again: harmless
    assert await keys.revoke("nosuchid") is False


async def test_a_key_revoked_elsewhere_stops_working_here_within_the_trust_window(
    keys: ApiKeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A verified key is trusted for VERIFIED_FOR_S without a database read; a revocation by
    another process (another store on the same database) is seen once that window ends."""
    key = await keys.create("cms-prod", ["cms"])
    assert await keys.verify(key) is not None  # read once, trusted for a few seconds
    elsewhere = ApiKeyStore(keys.db)
    assert await elsewhere.revoke(key_id(key)) is True
    assert await keys.verify(key) is not None  # within the window: not read again
    later = repositories._monotonic() + repositories.VERIFIED_FOR_S + 1
    monkeypatch.setattr(repositories, "_monotonic", lambda: later)
    assert await keys.verify(key) is None


async def test_a_wrong_secret_is_never_trusted_from_the_cache(keys: ApiKeyStore) -> None:
    key = await keys.create("cms-prod", ["cms"])
    assert await keys.verify(key) is not None
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert await keys.verify(forged) is None


async def test_rotate_gives_a_new_key_and_revokes_the_old(keys: ApiKeyStore) -> None:
    old = await keys.create("cms-prod", ["cms", "marketer"])
    new = await keys.rotate(key_id(old), expires_at=START + timedelta(days=7))
    assert key_id(new) != key_id(old)
    assert await keys.verify(old) is None
    assert await keys.verify(new) == ("cms-prod", frozenset({"cms", "marketer"}))
    fresh = await info(keys, key_id(new))
    assert fresh.expires_at == START + timedelta(days=7) and not fresh.revoked
    assert (await info(keys, key_id(old))).revoked

    with pytest.raises(LookupError, match=key_id(old)):
        await keys.rotate(key_id(old))  # revoked already
    with pytest.raises(LookupError):
        await keys.rotate("nosuchid")
    assert len(await keys.list()) == 2


async def test_a_rotation_that_fails_leaves_the_old_key_working(
    keys: ApiKeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = await keys.create("cms-prod", ["cms"])
    taken = key_id(await keys.create("other", ["cms"]))
    # The new key's id collides with an existing row: its insert fails, and with it the
    # whole rotation (the revocation of the old key included).
    monkeypatch.setattr(secrets, "token_hex", lambda _: taken)
    with pytest.raises(IntegrityError):
        await keys.rotate(key_id(old))
    assert await keys.verify(old) == ("cms-prod", frozenset({"cms"}))
    assert not (await info(keys, key_id(old))).revoked


async def test_last_use_is_written_at_most_once_a_minute(keys: ApiKeyStore, clock: Clock) -> None:
    key = await keys.create("busy", ["cms"])
    other = await keys.create("quiet", ["cms"])
    assert (await info(keys, key_id(key))).last_used_at is None

    await keys.verify(key)
    assert (await info(keys, key_id(key))).last_used_at == START
    for _ in range(5):  # a burst of requests within the minute: no further writes
        clock.advance(seconds=10)
        assert await keys.verify(key) is not None
    assert (await info(keys, key_id(key))).last_used_at == START
    assert (await info(keys, key_id(other))).last_used_at is None  # per key

    clock.advance(seconds=10)  # a minute since the last write
    await keys.verify(key)
    assert (await info(keys, key_id(key))).last_used_at == START + timedelta(minutes=1)

    await keys.verify(key[:-1] + ("A" if key[-1] != "A" else "B"))  # wrong secret
    await keys.verify(other)
    assert (await info(keys, key_id(other))).last_used_at == clock.now


async def test_a_failure_to_write_the_last_use_does_not_fail_the_key(
    keys: ApiKeyStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    key = await keys.create("cms-prod", ["cms"])

    @contextlib.asynccontextmanager
    async def broken(*_: str) -> AsyncIterator[None]:
        raise OperationalError("UPDATE api_keys", {}, Exception("database is locked"))
        yield

    monkeypatch.setattr(keys.db, "writing", broken)
    with caplog.at_level(logging.WARNING, logger="app.store.repositories"):
        assert await keys.verify(key) == ("cms-prod", frozenset({"cms"}))
    assert "could not record the use of API key" in caplog.text
    monkeypatch.undo()
    assert (await info(keys, key_id(key))).last_used_at is None


async def test_adopt_stores_a_given_key_once(keys: ApiKeyStore) -> None:
    await keys.adopt("bootstrap", ["admin"], GIVEN)
    assert await keys.verify(GIVEN) == ("bootstrap", frozenset({"admin"}))
    await keys.adopt("bootstrap", ["admin"], GIVEN)  # the next start: nothing changes
    await keys.adopt("renamed", ["cms"], GIVEN)
    assert await keys.verify(GIVEN) == ("bootstrap", frozenset({"admin"}))
    assert await keys.count() == 1
    # Revoked, it stays revoked even though the environment still hands it over.
    assert await keys.revoke("boot01")
    await keys.adopt("bootstrap", ["admin"], GIVEN)
    assert await keys.verify(GIVEN) is None


async def test_adopt_refuses_weak_or_misshapen_keys(keys: ApiKeyStore) -> None:
    for bad in (
        "",
        "secret",
        "mq_" + "x" * 40,  # no id
        "mq__" + "x" * 40,  # empty id
        "mq_ab_" + "x" * 31,  # a secret too short
        "mq_a.b_" + "x" * 40,  # an id that is not letters and digits
        "mq_ab_" + "x" * 39 + " ",  # whitespace
        "xx_ab_" + "x" * 40,
    ):
        with pytest.raises(ValueError, match="must look like mq_<id>_<secret>"):
            await keys.adopt("bootstrap", ["admin"], bad)
    with pytest.raises(ValueError, match="scopes"):
        await keys.adopt("bootstrap", ["root"], GIVEN)
    # Same id, another secret: not the same key, and not silently ignored.
    await keys.adopt("bootstrap", ["admin"], GIVEN)
    with pytest.raises(ValueError, match="already has the id 'boot01'"):
        await keys.adopt("bootstrap", ["admin"], GIVEN[:-1] + "X")
    assert await keys.count() == 1
    # A key made here has the shape adopt asks for (another deployment's key can be adopted).
    made = await keys.create("x", ["cms"])
    assert repositories.KEY_SHAPE.fullmatch(made)


async def test_verify_refuses_what_is_not_a_key(keys: ApiKeyStore) -> None:
    key = await keys.create("cms-prod", ["cms"])
    for bad in ("", "mq_", "mq_abc", key_id(key), key + "x", key.replace("mq_", "mx_")):
        assert await keys.verify(bad) is None
