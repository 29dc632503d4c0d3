"""Crash safety: SIGKILL the service in the middle of a stream of writes, start it again on the
same database, and find every acknowledged write whole and nothing half-written.

The real service (`python -m app serve`, in-process transformers engine: it is ready in
seconds, and writes never generate) runs on a temporary SQLite file, then on a database of the
test run's throwaway PostgreSQL. Writers of every kind fire from threads of their own at once:
product upserts in batches and withdrawals, event batches and shopper profiles, template saves
and label moves. Each records what the service acknowledged with a 2xx, what it refused, and
the one write whose answer never came (in flight when the process group was killed). After
each kill the service is started again on the same database, and:

- every acknowledged write is there: products with their latest acknowledged content (or
  withdrawn), events counted in the shoppers' histories, profiles, template versions with
  their text, labels where they were last moved;
- the write in flight is there whole or not at all: all of a product batch or none, all of an
  event batch or none, a version with its audit entry or neither, a label move with its audit
  entry or neither; a write never sent is not there;
- nothing is half-written anywhere in the database: every product and profile row validates,
  every template version has exactly one save in the audit log, versions are contiguous, no
  label points at a missing version or a draft;
- the restarted service agrees with its database: it serves every product on sale (GET, the
  listing and semantic search, the product itself first for its own title: the vector index
  is aligned with the catalog), hides withdrawn ones, counts every event, lists the versions
  and labels, and answers /readyz 200.

Each round kills at a random moment (``MARQUEE_CRASH_SEED`` replays one; the seed is in every
failure message) and the next round starts from the state the last restart recovered, so a
crash also hits a service that recovered from one. ``MARQUEE_CRASH_ROUNDS`` (default 2) runs
more rounds for a soak.

What it catches: a service that answered before its write was committed (memory first, a
write queued for later, a commit after the response) loses that write when killed in between:
the restarted service, which rebuilds everything from the database, lacks an acknowledged
write. A write split over transactions (products in one and their batch-mates in another, a
version and its audit entry, the label and its audit entry) shows up half-done when the kill
lands between them. A restart that cannot read what a kill left behind (an index file cut in
half, a label pointing at nothing) fails /readyz.

A kill can also land in a schema upgrade, at the first start of a new release: the last test
kills one between a migration's DDL and the record of its revision, and the next start must
upgrade the database all the same (on SQLite the DDL used to stay and the record not, so every
later start failed with "duplicate column").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from alembic.script import ScriptDirectory
from pydantic import ValidationError
from sqlalchemy import select

from app.catalog.store import Catalog
from app.config import PROJECT_ROOT, Settings
from app.domain import Product, Shopper
from app.generation.vllm_server import free_port
from app.store.db import (
    MIGRATIONS,
    AuditRecord,
    Database,
    EventRecord,
    ProductRecord,
    ShopperRecord,
    TemplateLabelRecord,
    TemplateVersionRecord,
    alembic_config,
    head_revision,
)
from app.store.repositories import ApiKeyStore

pytestmark = pytest.mark.integration

ROUNDS = int(os.environ.get("MARQUEE_CRASH_ROUNDS", "2"))
SEED = int(os.environ.get("MARQUEE_CRASH_SEED", str(time.time_ns() % 2**31)))
READY_TIMEOUT_S = 240  # a restart may rebuild the index (a kill between its two files)
FIRST_ACKS_TIMEOUT_S = 90
CATEGORY = "Crashproof Goods"
WRITTEN_AT = datetime(2026, 1, 1, tzinfo=UTC)
WRITERS_PER_KIND = 2
PRODUCTS_PER_WRITER = 8

# Far apart in meaning, so each product is the nearest to its own title in vector space.
CONCEPTS = [
    ("Brass Harpsichord Tuning Hammer", "A tuning hammer for harpsichords and early keyboards."),
    ("Inflatable Sea Kayak", "A two-seat touring kayak that packs into a backpack."),
    ("Refracting Astronomy Telescope", "A 90 mm telescope for the moon and the planets."),
    ("Sourdough Starter Kit", "A jar, a flour blend and a live culture for baking bread."),
    ("Welding Helmet With Auto-Darkening Lens", "Protects the eyes and face while welding."),
    ("Beekeeping Smoker", "A stainless smoker that calms honey bees at the hive."),
    ("Chess Clock", "A digital clock for timed chess games and tournaments."),
    ("Aquarium Canister Filter", "Keeps a freshwater fish tank clean and clear."),
    ("Leather Horse Saddle", "An English riding saddle for horses, hand stitched."),
    ("Soldering Iron Station", "A temperature-controlled iron for electronics repair."),
    ("Baby Stroller", "A foldable pushchair for infants and toddlers."),
    ("Pottery Wheel", "An electric wheel for throwing clay bowls and vases."),
    ("Snow Chains For Car Tyres", "Traction chains for driving on icy winter roads."),
    ("Violin Rosin", "Rosin for the bow of a violin, viola or cello."),
    ("Fly Fishing Reel", "A large-arbor reel for trout fishing with a fly rod."),
    ("Dog Grooming Clippers", "Quiet clippers for trimming a dog's coat at home."),
    ("Cordless Hedge Trimmer", "Trims garden hedges and shrubs on a battery."),
    ("Sewing Machine", "A mechanical machine for stitching fabric and hems."),
    ("Rock Climbing Harness", "A padded harness for indoor and outdoor climbing."),
    ("Espresso Tamper", "A flat steel tamper for packing coffee into a portafilter."),
]
assert len(CONCEPTS) >= WRITERS_PER_KIND * PRODUCTS_PER_WRITER


class Outcome(StrEnum):
    ACKED = "acked"  # a 2xx came back: the write must be there after any crash
    REFUSED = "refused"  # another status came back: the write must not be there
    UNKNOWN = "unknown"  # sent, no answer (in flight at the kill): whole or not at all
    NOT_SENT = "not sent"  # no connection: the write must not be there


# --- the service under test ---------------------------------------------------------------


class Service:
    """`python -m app serve` in a process group of its own, started and killed at will."""

    def __init__(self, folder: Path, database: str, settings: Settings) -> None:
        self.folder = folder
        index = folder / "index"
        if settings.index_dir.exists():  # the service rewrites it: a copy keeps the shared one
            shutil.copytree(settings.index_dir, index)
        self.env = {
            **os.environ,
            "MARQUEE_DATABASE_URL": database,
            "MARQUEE_CACHE_DIR": str(folder / "cache"),
            "MARQUEE_LLM_DIR": str(settings.llm_folder),
            "MARQUEE_INDEX_PATH": str(index),
            "MARQUEE_ENGINE": "transformers",
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.base_url = ""
        self.starts = 0
        self.log_path = folder / "service-0.log"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def start(self) -> float:
        """Start it and wait for /readyz 200; returns the seconds that took."""
        self.starts += 1
        port = free_port()
        self.log_path = self.folder / f"service-{self.starts}.log"
        began = time.monotonic()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app", "serve", "--port", str(port)],
                cwd=PROJECT_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killpg takes all of it
            )
        self.base_url = f"http://127.0.0.1:{port}"
        deadline = began + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(
                    f"start {self.starts} exited with {self.process.returncode} "
                    f"(seed {SEED}):\n{self.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(f"{self.base_url}/readyz", timeout=5)
                if ready.status_code == 200:
                    return time.monotonic() - began
                if ready.json().get("error"):
                    pytest.fail(
                        f"start {self.starts} failed to load (seed {SEED}): "
                        f"{ready.json()['error']}\n{self.log_tail()}"
                    )
            time.sleep(0.25)
        pytest.fail(f"start {self.starts} not ready in {READY_TIMEOUT_S} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the whole process group, as the OOM killer or a power cut would."""
        assert self.process is not None
        assert self.process.poll() is None, (
            f"the service died before it was killed:\n{self.log_tail()}"
        )
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


# --- what the database holds --------------------------------------------------------------


@dataclass
class Snapshot:
    products: dict[str, tuple[bool, Product]]  # id -> (on sale, product)
    bad_rows: list[str]  # rows whose payload is not a valid product or profile
    event_counts: Counter[str]  # shopper -> events stored
    event_ids: set[str]
    profiles: dict[str, Shopper]
    versions: dict[str, dict[int, tuple[str, str, bool]]]  # name -> version -> (source, msg, draft)
    labels: dict[str, dict[str, int]]
    audit: list[tuple[str, str, dict[str, Any]]]  # (template, action, detail), oldest first

    def audited(self, template: str, *actions: str) -> list[dict[str, Any]]:
        return [d for t, a, d in self.audit if t == template and a in actions]


async def _read(database: str) -> Snapshot:
    db = Database(database)  # read only: not upgraded
    try:
        async with db.sessions() as session:
            products = (await session.scalars(select(ProductRecord))).all()
            events = await session.execute(select(EventRecord.shopper_id, EventRecord.event_id))
            event_rows = events.tuples().all()
            shoppers = (await session.scalars(select(ShopperRecord))).all()
            versions = (await session.scalars(select(TemplateVersionRecord))).all()
            labels = (await session.scalars(select(TemplateLabelRecord))).all()
            audit = (await session.scalars(select(AuditRecord).order_by(AuditRecord.id))).all()
    finally:
        await db.dispose()
    snapshot = Snapshot({}, [], Counter(), set(), {}, {}, {}, [])
    for record in products:
        try:
            product = Product.model_validate(record.payload)
        except ValidationError as error:
            snapshot.bad_rows.append(f"product {record.id}: {error}")
            continue
        if product.id != record.id:
            snapshot.bad_rows.append(f"product row {record.id} holds product {product.id}")
        snapshot.products[record.id] = (record.withdrawn_at is None, product)
    for row in shoppers:
        try:
            snapshot.profiles[row.id] = Shopper.model_validate(row.payload)
        except ValidationError as error:
            snapshot.bad_rows.append(f"shopper {row.id}: {error}")
    for shopper_id, event_id in event_rows:
        snapshot.event_counts[shopper_id] += 1
        if event_id is not None:
            snapshot.event_ids.add(event_id)
    for version in versions:
        snapshot.versions.setdefault(version.name, {})[version.version] = (
            version.source,
            version.message,
            version.draft,
        )
    for label in labels:
        snapshot.labels.setdefault(label.name, {})[label.label] = label.version
    snapshot.audit = [(r.template, r.action, r.detail) for r in audit]
    return snapshot


def read_database(database: str) -> Snapshot:
    return asyncio.run(_read(database))


def check_nothing_half_written(snapshot: Snapshot) -> None:
    """What must hold in any database the service ever wrote, whoever wrote what."""
    assert not snapshot.bad_rows, snapshot.bad_rows
    for name, versions in snapshot.versions.items():
        assert sorted(versions) == list(range(1, len(versions) + 1)), (
            f"template {name}: versions not contiguous: {sorted(versions)}"
        )
        saves = Counter(d["version"] for d in snapshot.audited(name, "save", "save_draft"))
        assert saves == Counter(versions.keys()), (
            f"template {name}: versions {sorted(versions)} but saves audited {dict(saves)}"
        )
    audited = {t for t, a, _ in snapshot.audit if a in ("save", "save_draft")}
    assert audited <= set(snapshot.versions), f"saves audited for no version: {audited}"
    for name, labels in snapshot.labels.items():
        for label, version in labels.items():
            stored = snapshot.versions.get(name, {}).get(version)
            assert stored is not None, f"label {name}:{label} points at missing version {version}"
            assert not stored[2], f"label {name}:{label} points at draft {version}"


# --- writers --------------------------------------------------------------------------------


class Writer:
    """Fires one kind of write in a loop from a thread of its own, and remembers what the
    service answered. It owns its resources (products, shoppers, a template): its writes are
    sequential, so the state it expects is exact but for the one write in flight at a kill.
    State carries over rounds: each round starts from what the previous restart recovered."""

    kind = ""

    def __init__(self, number: int, seed: int) -> None:
        self.number = number
        self.rng = random.Random(seed)
        self.stamps = 0
        self.acked = 0  # this round
        self.in_flight = False  # this round: a write had no answer when the service died
        self.outcomes: Counter[Outcome] = Counter()  # all rounds
        self.settled: Counter[str] = Counter()  # writes in flight at a kill: found stored or not
        self.refusals: list[str] = []
        self.dead = False  # the service stopped answering: stop writing

    def stamp(self) -> str:
        self.stamps += 1
        return f"{self.number}-{self.stamps}"

    def run(self, base_url: str, key: str, stop: threading.Event) -> None:
        self.acked, self.dead, self.in_flight = 0, False, False
        with httpx.Client(base_url=base_url, headers={"X-API-Key": key}, timeout=120) as client:
            while not stop.is_set() and not self.dead:
                try:
                    self.step(client)
                except Exception as error:  # a test bug: shown, never swallowed
                    self.refusals.append(f"writer crashed: {type(error).__name__}: {error}")
                    self.dead = True

    def send(
        self,
        client: httpx.Client,
        method: str,
        path: str,
        body: object,
        headers: dict[str, str] | None = None,
    ) -> tuple[Outcome, httpx.Response | None]:
        response: httpx.Response | None = None
        try:
            response = client.request(method, path, json=body, headers=headers)
        except httpx.ConnectError:  # no connection was made: nothing was sent
            outcome = Outcome.NOT_SENT
        except httpx.TransportError:  # sent; the answer never came
            outcome = Outcome.UNKNOWN
        else:
            outcome = Outcome.ACKED if response.is_success else Outcome.REFUSED
        self.outcomes[outcome] += 1
        if outcome is Outcome.ACKED:
            self.acked += 1
        elif outcome is Outcome.REFUSED:
            assert response is not None
            self.refusals.append(f"{method} {path}: {response.status_code} {response.text[:300]}")
        else:
            self.dead = True
            self.in_flight = outcome is Outcome.UNKNOWN
        return outcome, response

    def settle(self, stored: bool) -> None:
        self.settled["in flight, stored" if stored else "in flight, not stored"] += 1

    def step(self, client: httpx.Client) -> None:
        raise NotImplementedError

    def verify(self, snapshot: Snapshot, client: httpx.Client) -> None:
        """Check the restarted service and its database; settle the write that was in flight."""
        raise NotImplementedError


ProductState = tuple[bool, Product]  # (on sale, content)


class ProductWriter(Writer):
    """Upserts batches of 2-5 of its products (text changed or not) and withdraws some."""

    kind = "products"

    def __init__(self, number: int, seed: int) -> None:
        super().__init__(number, seed)
        first = number * PRODUCTS_PER_WRITER
        self.concepts = {
            f"crash-p{number}-{j}": CONCEPTS[first + j] for j in range(PRODUCTS_PER_WRITER)
        }
        self.state: dict[str, ProductState] = {}
        self.pending: dict[str, ProductState] | None = None  # the batch in flight at the kill

    def product(self, product_id: str) -> Product:
        title, description = self.concepts[product_id]
        stamp = self.stamp()
        before = self.state.get(product_id)
        if before is not None and self.rng.random() < 0.4:  # price and stock only: no embedding
            description = before[1].description
        else:
            description = f"{description} Edition {stamp}."
        return Product(
            id=product_id,
            title=title,
            description=description,
            brand="Crashworks",
            category=CATEGORY,
            tags=("crash-test",),
            price=round(self.rng.uniform(5, 900), 2),
            in_stock=self.rng.random() < 0.8,
            url=f"https://shop.example.com/p/{product_id}",
            # Unique per write, outside the embedded text: names the write a row came from.
            image_url=f"https://img.example.com/{product_id}/{stamp}.jpg",
            # Given, so the service stores the write as sent (it stamps the dates a write
            # leaves out: tests/test_catalog_writes.py).
            added_at=WRITTEN_AT,
            restocked_at=WRITTEN_AT,
        )

    def step(self, client: httpx.Client) -> None:
        on_sale = [pid for pid, (sale, _) in self.state.items() if sale]
        if on_sale and self.rng.random() < 0.15:
            product_id = self.rng.choice(on_sale)
            outcome, _ = self.send(client, "DELETE", f"/v1/products/{product_id}", None)
            batch = {product_id: (False, self.state[product_id][1])}
        else:
            chosen = self.rng.sample(sorted(self.concepts), self.rng.randint(2, 5))
            products = [self.product(pid) for pid in chosen]
            body = {"products": [p.model_dump(mode="json") for p in products]}
            outcome, _ = self.send(client, "PUT", "/v1/products", body)
            batch = {p.id: (True, p) for p in products}
        if outcome is Outcome.ACKED:
            self.state.update(batch)
        elif outcome is Outcome.UNKNOWN:
            self.pending = batch

    def verify(self, snapshot: Snapshot, client: httpx.Client) -> None:
        found = {pid: snapshot.products.get(pid) for pid in self.concepts}
        pending = self.pending or {}
        for pid, got in found.items():
            allowed = [self.state.get(pid)] + ([pending[pid]] if pid in pending else [])
            assert got in allowed, (
                f"product {pid}: the database holds {describe(got)}; the last acknowledged "
                f"write was {describe(self.state.get(pid))}"
                + (f", the write in flight {describe(pending[pid])}" if pid in pending else "")
            )
        if pending:
            kept = [pid for pid in pending if found[pid] == self.state.get(pid)]
            applied = [pid for pid in pending if found[pid] == pending[pid]]
            assert len(kept) == len(pending) or len(applied) == len(pending), (
                f"half of a product write in flight is stored: {sorted(applied)} written, "
                f"{sorted(set(pending) - set(applied))} not"
            )
            self.settle(len(kept) < len(pending))
            for pid in pending:  # settled: what the database holds is what was written
                if found[pid] is None:
                    self.state.pop(pid, None)
                else:
                    self.state[pid] = found[pid]  # type: ignore[assignment]
            self.pending = None
        for pid in self.concepts:
            response = client.get(f"/v1/products/{pid}")
            state = self.state.get(pid)
            if state is not None and state[0]:
                assert response.status_code == 200, f"{pid} on sale: {response.text[:300]}"
                assert Product.model_validate(response.json()) == state[1], (
                    f"{pid}: the service serves {response.json()}, the database {state[1]}"
                )
            else:
                assert response.status_code == 404, f"{pid} not on sale: {response.text[:300]}"


def describe(state: ProductState | None) -> str:
    if state is None:
        return "nothing"
    on_sale, product = state
    return f"{'' if on_sale else 'withdrawn '}{product.image_url}"


class EventWriter(Writer):
    """Posts batches of 1-6 events for its shoppers (mostly with event ids, some without) and
    puts their profiles now and then."""

    kind = "events"

    def __init__(self, number: int, seed: int, product_ids: list[str]) -> None:
        super().__init__(number, seed)
        self.shoppers = [f"crash-s{number}-{k}" for k in range(3)]
        self.product_ids = product_ids
        self.counts: Counter[str] = Counter()
        self.ids: set[str] = set()
        self.profiles: dict[str, Shopper] = {}
        self.pending_events: list[dict[str, str]] | None = None
        self.pending_profile: Shopper | None = None
        self.unsent_ids: set[str] = set()

    def step(self, client: httpx.Client) -> None:
        if self.rng.random() < 0.15:
            shopper_id = self.rng.choice(self.shoppers)
            stamp = self.stamp()
            body = {
                "name": f"Crash {stamp}",
                "segment": self.rng.choice(["regular", "sporty", "new"]),
                "interests": [f"interest {stamp}"],
            }
            outcome, _ = self.send(client, "PUT", f"/v1/shoppers/{shopper_id}", body)
            profile = Shopper(id=shopper_id, **body)
            if outcome is Outcome.ACKED:
                self.profiles[shopper_id] = profile
            elif outcome is Outcome.UNKNOWN:
                self.pending_profile = profile
            return
        stamp = self.stamp()
        with_ids = self.rng.random() < 0.75
        events = [
            {
                "shopper_id": self.rng.choice(self.shoppers),
                "product_id": self.rng.choice(self.product_ids),
                "type": self.rng.choice(["view", "view", "add_to_cart", "purchase"]),
                **({"event_id": f"crash-e{stamp}-{j}"} if with_ids else {}),
            }
            for j in range(self.rng.randint(1, 6))
        ]
        outcome, response = self.send(client, "POST", "/v1/events", {"events": events})
        if outcome is Outcome.ACKED:
            assert response is not None
            answer = response.json()
            if answer["accepted"] != len(events) or answer["duplicates"] != 0:
                self.refusals.append(f"new events not all accepted: {answer}")
            self.counts.update(e["shopper_id"] for e in events)
            self.ids.update(e["event_id"] for e in events if "event_id" in e)
        elif outcome is Outcome.UNKNOWN:
            self.pending_events = events
        elif outcome is Outcome.NOT_SENT:
            self.unsent_ids.update(e["event_id"] for e in events if "event_id" in e)

    def verify(self, snapshot: Snapshot, client: httpx.Client) -> None:
        mine = {i for i in snapshot.event_ids if i.startswith(f"crash-e{self.number}-")}
        assert self.ids <= mine, f"acknowledged events lost: {sorted(self.ids - mine)[:10]}"
        assert not mine & self.unsent_ids, f"events never sent are stored: {mine & self.unsent_ids}"
        delta = {s: snapshot.event_counts[s] - self.counts[s] for s in self.shoppers}
        pending = self.pending_events or []
        sent = Counter(e["shopper_id"] for e in pending)
        sent_ids = {e["event_id"] for e in pending if "event_id" in e}
        applied = {s: sent[s] for s in self.shoppers}
        assert delta in ({s: 0 for s in self.shoppers}, applied), (
            f"events of shoppers {self.shoppers}: the database holds {delta} more than "
            f"acknowledged; the batch in flight had {dict(sent)}: lost or half-written"
        )
        stored_ids = mine - self.ids
        assert stored_ids in (set(), sent_ids), (
            f"events stored but never acknowledged: {sorted(stored_ids)}; in flight: {sent_ids}"
        )
        if pending:
            self.settle(delta == applied)
            if delta == applied:
                assert stored_ids == sent_ids, "events counted, ids missing"
        self.counts.update(delta)
        self.ids |= stored_ids
        if pending and sent_ids == {e.get("event_id") for e in pending}:
            # What a client does with an answer that never came: send it again. Each event id
            # is recorded once: all of them now, or none (they were stored before the kill).
            again = client.post("/v1/events", json={"events": pending})
            assert again.status_code == 202, again.text
            accepted = again.json()["accepted"]
            assert accepted == (0 if stored_ids else len(pending)), again.json()
            if accepted:
                self.counts.update(sent)
                self.ids |= sent_ids
        self.pending_events = None
        for shopper_id in self.shoppers:
            stored = snapshot.profiles.get(shopper_id)
            expected = self.profiles.get(shopper_id)
            allowed = [expected]
            if self.pending_profile is not None and self.pending_profile.id == shopper_id:
                allowed.append(self.pending_profile)
            assert stored in allowed, (
                f"profile {shopper_id}: the database holds {stored}, acknowledged {expected}"
            )
            if stored is not None:
                self.profiles[shopper_id] = stored
        if self.pending_profile is not None:
            self.settle(snapshot.profiles.get(self.pending_profile.id) == self.pending_profile)
        self.pending_profile = None
        for shopper_id in self.shoppers:
            response = client.get(f"/v1/shoppers/{shopper_id}")
            if not self.counts[shopper_id] and shopper_id not in self.profiles:
                assert response.status_code == 404, response.text[:300]
                continue
            assert response.status_code == 200, response.text[:300]
            shown = response.json()
            assert shown["events"] == self.counts[shopper_id], (
                f"{shopper_id}: the service counts {shown['events']} events, "
                f"{self.counts[shopper_id]} were stored"
            )
            profile = self.profiles.get(shopper_id)
            if profile is not None:
                assert (shown["name"], shown["segment"], shown["interests"]) == (
                    profile.name,
                    profile.segment,
                    list(profile.interests),
                ), f"{shopper_id}: served {shown}, stored {profile}"


@dataclass
class Save:
    version: int
    source: str
    message: str
    draft: bool


@dataclass
class Move:
    label: str
    version: int


@dataclass
class TemplateState:
    versions: dict[int, tuple[str, str, bool]] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    moves: list[tuple[str, int]] = field(default_factory=list)  # acknowledged, in order


class TemplateWriter(Writer):
    """Saves versions of its own template (If-Match, a draft now and then) and moves its
    production and candidate labels between its versions (If-Match now and then)."""

    kind = "templates"

    def __init__(self, number: int, seed: int, base_source: str) -> None:
        super().__init__(number, seed)
        self.name = f"crash_tpl_{number}"
        self.base_source = base_source.replace("name: grid_heading", f"name: {self.name}").replace(
            "placement: home_grid", f"placement: crash_place_{number}"
        )
        assert self.base_source != base_source
        self.state = TemplateState()
        self.pending: Save | Move | None = None

    def step(self, client: httpx.Client) -> None:
        state = self.state
        labelable = [v for v, (_, _, draft) in state.versions.items() if not draft]
        if not labelable or self.rng.random() < 0.55:
            stamp = self.stamp()
            latest = max(state.versions, default=0)
            save = Save(
                version=latest + 1,
                source=f"{self.base_source}\n{{# crash edit {stamp} #}}\n",
                message=f"crash {stamp}",
                draft=bool(labelable) and self.rng.random() < 0.1,
            )
            headers = {"If-Match": f'"{latest}"'} if latest else None
            body = {"source": save.source, "message": save.message, "draft": save.draft}
            outcome, response = self.send(
                client, "POST", f"/v1/templates/{self.name}/versions", body, headers
            )
            if outcome is Outcome.ACKED:
                assert response is not None
                if response.json()["version"] != save.version:
                    self.refusals.append(f"saved as {response.json()['version']}: {save}")
                state.versions[save.version] = (save.source, save.message, save.draft)
            elif outcome is Outcome.UNKNOWN:
                self.pending = save
            return
        move = Move(self.rng.choice(["production", "candidate"]), self.rng.choice(labelable))
        current = state.labels.get(move.label)
        checked = current is not None and self.rng.random() < 0.5
        outcome, response = self.send(
            client,
            "PUT",
            f"/v1/templates/{self.name}/labels/{move.label}",
            {"version": move.version},
            {"If-Match": f'"{current}"'} if checked else None,
        )
        if outcome is Outcome.ACKED:
            assert response is not None
            if response.json()["previous"] != current:
                self.refusals.append(f"label {move} moved from {response.json()}, not {current}")
            state.labels[move.label] = move.version
            state.moves.append((move.label, move.version))
        elif outcome is Outcome.UNKNOWN:
            self.pending = move

    def verify(self, snapshot: Snapshot, client: httpx.Client) -> None:
        state, name, pending = self.state, self.name, self.pending
        stored = snapshot.versions.get(name, {})
        for version, saved in state.versions.items():
            assert stored.get(version) == saved, (
                f"{name} v{version}: acknowledged {saved[1]!r}, stored "
                f"{stored[version][1] if version in stored else 'nothing'!r}"
            )
        extra = set(stored) - set(state.versions)
        if isinstance(pending, Save) and extra:
            assert extra == {pending.version}, f"{name}: unacknowledged versions {sorted(extra)}"
            assert stored[pending.version] == (pending.source, pending.message, pending.draft), (
                f"{name} v{pending.version} is not the save in flight"
            )
        else:
            assert not extra, f"{name}: versions never acknowledged nor in flight: {extra}"
        moves = [(d["label"], d["to"]) for d in snapshot.audited(name, "move_label")]
        done = [*state.moves, (pending.label, pending.version)] if isinstance(pending, Move) else []
        assert moves == state.moves or (done and moves == done), (
            f"{name}: label moves audited {moves}, acknowledged {state.moves}, in flight {pending}"
        )
        expected = dict(state.labels)
        if moves == done and isinstance(pending, Move):
            expected[pending.label] = pending.version
        labels = snapshot.labels.get(name, {})
        assert labels == expected, (
            f"{name}: labels {labels}, expected {expected} (last acknowledged {state.labels}, "
            f"in flight {pending})"
        )
        if pending is not None:
            self.settle(bool(extra) if isinstance(pending, Save) else moves == done)
        state.versions, state.labels, state.moves = dict(stored), labels, moves
        self.pending = None
        response = client.get(f"/v1/templates/{name}")
        assert response.status_code == 200, response.text[:300]
        detail = response.json()
        assert detail["labels"] == labels, f"{name}: served labels {detail['labels']}"
        assert [v["version"] for v in detail["versions"]] == sorted(stored, reverse=True)
        newest = max(stored)
        shown = client.get(f"/v1/templates/{name}/versions/{newest}")
        assert shown.status_code == 200 and shown.json()["source"] == stored[newest][0]


def check_search(writers: list[Writer], snapshot: Snapshot, client: httpx.Client) -> None:
    """The restarted service's index matches its catalog: every product on sale is found,
    itself first for its own title; withdrawn ones are not."""
    on_sale = {
        pid: product
        for w in writers
        if isinstance(w, ProductWriter)
        for pid, (sale, product) in w.state.items()
        if sale
    }
    listing = client.get("/v1/products", params={"category": CATEGORY, "limit": 200})
    assert listing.status_code == 200, listing.text[:300]
    listed = {p["id"] for p in listing.json()["products"]}
    assert listed == set(on_sale), f"listed {sorted(listed)}, on sale {sorted(on_sale)}"
    for product in on_sale.values():
        params: dict[str, str | int] = {
            "q": product.title,
            "category": CATEGORY,
            "in_stock_only": "false",
            "limit": 50,
        }
        found = client.get("/v1/products/search", params=params)
        assert found.status_code == 200, found.text[:300]
        hits = [Product.model_validate(hit["product"]) for hit in found.json()["results"]]
        assert {hit.id for hit in hits} == set(on_sale), (
            f"searching {product.title!r}: found {sorted(h.id for h in hits)}, on sale "
            f"{sorted(on_sale)}"
        )
        assert hits[0] == product, (
            f"searching {product.title!r}: first {hits[0].id} ({hits[0].title!r}): the index "
            "rows do not match the catalog"
        )
    withdrawn = {pid for pid, (sale, _) in snapshot.products.items() if not sale}
    assert not listed & withdrawn


def test_acknowledged_writes_survive_sigkill(
    database_url: str, settings: Settings, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    key = asyncio.run(ApiKeyStore.create_in(database_url, "crash-admin", ["admin"]))
    product_ids = [p.id for p in Catalog.from_file(settings.products_file).products[:60]]
    base_source = (settings.prompts_dir / "grid_heading.j2").read_text(encoding="utf-8")
    writers: list[Writer] = []
    for number in range(WRITERS_PER_KIND):
        writers += [
            ProductWriter(number, rng.randrange(2**31)),
            EventWriter(number, rng.randrange(2**31), product_ids),
            TemplateWriter(number, rng.randrange(2**31), base_source),
        ]
    kinds = {w.kind for w in writers}
    service = Service(tmp_path, database_url, settings)
    timings = [f"start {service.start():.1f} s"]
    try:
        for round_number in range(1, ROUNDS + 1):
            stop = threading.Event()
            threads = [
                threading.Thread(target=w.run, args=(service.base_url, key, stop), daemon=True)
                for w in writers
            ]
            began = time.monotonic()
            for thread in threads:
                thread.start()
            # Mid-stream: every kind has been acknowledged at least once, then a random pause.
            deadline = began + FIRST_ACKS_TIMEOUT_S
            while not all(any(w.acked for w in writers if w.kind == k) for k in kinds):
                refused = [r for w in writers for r in w.refusals]
                assert not refused and time.monotonic() < deadline, (
                    f"round {round_number}: writers stuck (seed {SEED}): {refused[:5]}\n"
                    f"{service.log_tail()}"
                )
                time.sleep(0.02)
            time.sleep(rng.uniform(0.05, 1.5))
            service.kill()
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
                assert not thread.is_alive(), "a writer is stuck after the kill"
            refused = [f"{w.kind}[{w.number}]: {r}" for w in writers for r in w.refusals]
            assert not refused, f"writes refused (seed {SEED}): {refused[:10]}"
            in_flight = sum(w.in_flight for w in writers)
            acked = {k: sum(w.acked for w in writers if w.kind == k) for k in sorted(kinds)}
            timings.append(
                f"round {round_number}: {time.monotonic() - began:.1f} s of writes, "
                f"acked {acked}, {in_flight} in flight at the kill"
            )

            restart_s = service.start()  # the same database, the same index folder
            timings.append(f"restart {restart_s:.1f} s")
            snapshot = read_database(database_url)
            try:
                check_nothing_half_written(snapshot)
                with httpx.Client(
                    base_url=service.base_url, headers={"X-API-Key": key}, timeout=60
                ) as client:
                    for writer in writers:
                        writer.verify(snapshot, client)
                    check_search(writers, snapshot, client)
                    ready = client.get("/readyz")
                    assert ready.status_code == 200, ready.text
            except AssertionError as error:
                raise AssertionError(
                    f"round {round_number} of {ROUNDS} (MARQUEE_CRASH_SEED={SEED}, "
                    f"logs in {tmp_path}): {error}"
                ) from error
    finally:
        service.close()
    totals = Counter[str]()
    for writer in writers:
        for outcome, count in writer.outcomes.items():
            totals[f"{writer.kind} {outcome}"] += count
        for settled, count in writer.settled.items():
            totals[f"{writer.kind} {settled}"] += count
    print(f"\ncrash safety (seed {SEED}): {'; '.join(timings)}\n  {dict(sorted(totals.items()))}")


# Upgrade the database at argv[1] to head, and SIGKILL this process as the statement that
# records the new revision starts: after the migration's DDL, before its commit.
UPGRADE_AND_DIE = """
import asyncio, os, signal, sys
from sqlalchemy import event
from app.store.db import Database

db = Database(sys.argv[1])

@event.listens_for(db.engine.sync_engine, "before_cursor_execute")
def die(connection, cursor, statement, *_):
    if statement.startswith("UPDATE alembic_version"):
        os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(db.upgrade())
"""


def test_a_kill_during_a_schema_upgrade_leaves_a_database_the_next_start_upgrades(
    database_url: str,
) -> None:
    head = head_revision()
    assert head is not None
    previous = ScriptDirectory(str(MIGRATIONS)).get_revision(head).down_revision
    assert isinstance(previous, str), "the newest migration has one parent"

    async def at_previous() -> None:  # the database as the release before left it
        db = Database(database_url)
        async with db.engine.begin() as connection:
            await connection.run_sync(lambda sync: command.upgrade(alembic_config(sync), previous))
        await db.dispose()

    asyncio.run(at_previous())
    killed = subprocess.run(
        [sys.executable, "-c", UPGRADE_AND_DIE, database_url],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]

    async def next_start() -> str | None:  # what the service's start-up does first
        db = Database(database_url)
        try:
            await db.upgrade()
            return await db.revision()
        finally:
            await db.dispose()

    assert asyncio.run(next_start()) == head
