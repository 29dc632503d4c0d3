"""The load test's users: a CMS backend calling Marquee on behalf of page views, and a catalog
admin re-syncing products now and then. Driven by bench/load.py (locust's library API); it
also runs with the locust CLI (`locust -f bench/locustfile.py --host URL`) given the keys in
MARQUEE_LOAD_CMS_KEY and MARQUEE_LOAD_ADMIN_KEY.

The mix: task weights out of 1000 for the storefront, and why each is that common.

- 300 banner for a known shopper: every page view asks for its hero banner, the bulk of the
  traffic; answered from the cache once that shopper's banner was made (300 s TTL). Reported
  as "(cache hit)" or "(generated)" by the answer's `cached`, which is also true for a request
  that waited for an identical one's generation (coalesced).
- 15 banner for a fresh inline profile: anonymous visitors whose session profile the CMS
  builds. Each is a real generation (the 2 cores make about one banner a second at best), so
  kept rare (1.5 %): more and the machine does nothing but generate.
- 5 homepage (3 sections): rare; three generations and never cached (a campaign preview).
- 80 banner by id: the CMS re-reads a banner it rendered; half of them revalidate the copy
  it holds (If-None-Match: the documented 304).
- 120 feedback: an impression per rendered banner, fewer clicks, fewer conversions; 5 % resend
  an event id already sent (idempotent: 202 with recorded=false).
- 60 products page: listing and category pages.
- 80 products search: the search box (a query embedding per request).
- 120 product lookup: product detail pages, the most common page after home.
- 60 shopper read: the account area and the CMS's own personalisation.
- 10 shopper profile write: a CRM sync, mostly the same profile again; a third of them an
  interest more or fewer (which invalidates that shopper's cached banner).
- 80 events batch: the site's behaviour stream in batches of 1-8. 9 in 10 name visitors
  outside the 72 demo shoppers (the site's long tail), 1 in 10 a demo shopper, whose next
  banner is then made again, as it should be.
- 30 templates: the CMS refreshes its template list.
- 30 experiment home_hero: the dashboard polls the experiment report.

One `CatalogAdmin` (fixed, not weighted) re-syncs 25 products every 40-80 s: usually nothing
changed (no re-embedding, no cache invalidation); every third sync changes a price. No text
changed, so nothing is embedded again, but the catalog version moves and every cached banner
is stale (the cache key holds it): the next minute shows a wave of generations.
"""

from __future__ import annotations

import collections
import json
import os
import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from locust import FastHttpUser, between, task

DATA = Path(__file__).resolve().parent.parent / "data"
CLIENT_TIMEOUT_S = 300.0  # a generation takes seconds, tens of seconds when 2 cores are busy


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


PRODUCTS = _jsonl(DATA / "products.jsonl")
PRODUCT_IDS = [p["id"] for p in PRODUCTS]
CATEGORIES = sorted({p["category"] for p in PRODUCTS})
SHOPPERS = _jsonl(DATA / "shoppers.jsonl")
SHOPPER_IDS = [s["id"] for s in SHOPPERS]
INTERESTS = sorted({i for s in SHOPPERS for i in s["interests"]})
LONG_TAIL = 2000  # anonymous visitors whose events arrive (ids v0000..v1999)
QUERIES = [
    "trail running shoes",
    "waterproof hiking jacket",
    "lightweight tent for two",
    "cast iron skillet",
    "pour over coffee",
    "green tea gift set",
    "vitamin c serum",
    "noise cancelling headphones",
    "scented candle",
    "yoga mat non slip",
    "linen shirt",
    "merino wool sweater",
    "carry-on backpack",
    "dog bed washable",
    "cat toys",
    "gift for a coffee lover",
    "marathon training gear",
    "minimalist travel bag",
    "wireless earbuds for running",
    "home workout dumbbells",
]


class Config:
    """Set by bench/load.py before the users start (or from the environment, for the CLI)."""

    cms_key = os.environ.get("MARQUEE_LOAD_CMS_KEY", "")
    admin_key = os.environ.get("MARQUEE_LOAD_ADMIN_KEY", "")


class Observed:
    """What the responses said beyond their status: cache hits, fallback copy, 304s, when
    banners were generated for whom, and the copy served under each banner id."""

    lock = threading.Lock()
    counts: collections.Counter[str] = collections.Counter()
    banner_ids: collections.deque[str] = collections.deque(maxlen=500)
    feedback_ids: collections.deque[str] = collections.deque(maxlen=200)
    # (shopper id, start, end) of every known-shopper banner request answered by generating.
    generations: list[tuple[str, float, float]] = []
    copy_by_id: dict[str, str] = {}  # banner id -> its copy, as last seen
    etags: dict[str, tuple[str, str]] = {}  # banner id -> (ETag, copy) of the last fetch

    @classmethod
    def count(cls, key: str, n: int = 1) -> None:
        with cls.lock:
            cls.counts[key] += n

    @classmethod
    def reset(cls) -> None:
        with cls.lock:
            cls.counts.clear()
            cls.banner_ids.clear()
            cls.feedback_ids.clear()
            cls.generations.clear()
            cls.copy_by_id.clear()
            cls.etags.clear()

    @classmethod
    def saw(cls, banners: list[dict[str, Any]], generated: bool) -> None:
        """Remember banner ids; count fallback copy among the banners just generated, and
        copy that changed under an id already seen (the id is derived from the shopper, the
        template and the products, not from the copy)."""
        with cls.lock:
            for banner in banners:
                cls.banner_ids.append(banner["id"])
                copy = _copy(banner)
                first = cls.copy_by_id.setdefault(banner["id"], copy)
                if first != copy:
                    cls.copy_by_id[banner["id"]] = copy
                    cls.counts["banner ids served with new copy"] += 1
                if not generated:
                    continue
                cls.counts["banners generated"] += 1
                if banner.get("fallback"):
                    cls.counts["fallback banners (of generated)"] += 1
                if any(str(f).startswith("engine_error") for f in banner.get("flags", [])):
                    cls.counts["engine_error banners (of generated)"] += 1

    @classmethod
    def overlapping_generations(cls) -> int:
        """Generations for a shopper that started while another request for the same shopper
        was being generated: work a coalescing cache would have done once."""
        overlapping = 0
        open_until: dict[str, float] = {}
        for shopper, start, end in sorted(cls.generations, key=lambda g: g[1]):
            if start < open_until.get(shopper, 0.0):
                overlapping += 1
            open_until[shopper] = max(open_until.get(shopper, 0.0), end)
        return overlapping


def _copy(banner: dict[str, Any]) -> str:
    return "|".join(str(banner.get(k)) for k in ("headline", "subheadline", "cta"))


def _problem(response: Any) -> str:
    """A short reason for a failed request: status and the start of the body."""
    body = (response.text or "")[:200] if response.status_code else ""
    error = getattr(response, "error", None)
    return f"HTTP {response.status_code}: {body or error!r}"


def _inline_profile() -> dict[str, Any]:
    """A visitor the service has never seen: a demo shopper's behaviour under a fresh id, with
    a random subset of interests, so neither the cache nor the id repeats."""
    base = random.choice([s for s in SHOPPERS if s["history"]])
    history = base["history"][-random.randint(5, 40) :]
    interests = random.sample(INTERESTS, k=random.randint(1, 3))
    return {
        "id": f"anon-{uuid.uuid4().hex[:12]}",
        "segment": base["segment"],
        "interests": interests,
        "history": history,
    }


class Storefront(FastHttpUser):
    """The CMS backend: one instance is one worker rendering pages one after another."""

    weight = 1
    wait_time = between(0.5, 2.5)
    network_timeout = CLIENT_TIMEOUT_S
    connection_timeout = 30.0

    def on_start(self) -> None:
        self.headers = {"X-API-Key": Config.cms_key}

    # Banners --------------------------------------------------------------------------------

    def _banners(self, body: dict[str, Any], name: str, split_cached: bool) -> None:
        start = time.monotonic()
        with self.client.post(
            "/v1/banners", json=body, headers=self.headers, name=name, catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(_problem(response))
                return
            data = response.json()
            banners = data.get("banners") or []
            if not banners:
                response.failure("200 without banners")
                return
            cached = bool(data.get("cached"))
            if split_cached:
                response.request_meta["name"] = f"{name} ({'cache hit' if cached else 'generated'})"
                Observed.count(f"known-shopper banners {'cached' if cached else 'generated'}")
                if not cached:
                    with Observed.lock:
                        Observed.generations.append((body["shopper_id"], start, time.monotonic()))
            Observed.saw(banners, generated=not cached)
            response.success()

    @task(300)
    def banner_known_shopper(self) -> None:
        self._banners({"shopper_id": random.choice(SHOPPER_IDS)}, "banner: known shopper", True)

    @task(15)
    def banner_fresh_profile(self) -> None:
        self._banners({"profile": _inline_profile()}, "banner: fresh profile", False)

    @task(5)
    def homepage(self) -> None:
        body = {"shopper_id": random.choice(SHOPPER_IDS)}
        with self.client.post(
            "/v1/homepages", json=body, headers=self.headers, name="homepage", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(_problem(response))
                return
            sections = response.json()["homepage"]["sections"]
            if not sections:
                response.failure("homepage without sections")
                return
            Observed.saw([section["banner"] for section in sections], generated=True)
            response.success()

    def _known_banner(self) -> str | None:
        with Observed.lock:
            return random.choice(Observed.banner_ids) if Observed.banner_ids else None

    @task(80)
    def banner_by_id(self) -> None:
        """Half the time a revalidation (If-None-Match with the ETag of an earlier fetch, as a
        CMS holding the rendered banner would), checked: after a 304 the banner is fetched
        again to see whether the copy held was in fact still current."""
        banner_id = self._known_banner()
        if banner_id is None:
            return
        with Observed.lock:
            held = Observed.etags.get(banner_id)
        if held is None or random.random() < 0.5:
            self._fetch_banner(banner_id)
            return
        etag, copy = held
        with self.client.get(
            f"/v1/banners/{banner_id}",
            headers={**self.headers, "If-None-Match": etag},
            name="banner by id (If-None-Match)",
            catch_response=True,
        ) as response:
            if response.status_code == 200:
                self._hold(banner_id, response)
                response.success()
                return
            if response.status_code != 304:
                response.failure(_problem(response))
                return
            Observed.count("304 not modified")
            response.success()
        current = self._fetch_banner(banner_id)
        if current is not None and current != copy:
            Observed.count("304 although the copy had changed")

    def _fetch_banner(self, banner_id: str) -> str | None:
        with self.client.get(
            f"/v1/banners/{banner_id}",
            headers=self.headers,
            name="banner by id",
            catch_response=True,
        ) as response:
            if response.status_code == 200 and response.json().get("id") == banner_id:
                response.success()
                return self._hold(banner_id, response)
            response.failure(_problem(response))
            return None

    @staticmethod
    def _hold(banner_id: str, response: Any) -> str:
        """Keep a fetched banner's ETag and copy; return the copy."""
        copy = _copy(response.json())
        etag = response.headers.get("ETag") if response.headers is not None else None
        if etag:
            with Observed.lock:
                Observed.etags[banner_id] = (str(etag), copy)
        return copy

    @task(120)
    def feedback(self) -> None:
        banner_id = self._known_banner()
        if banner_id is None:
            return
        roll = random.random()
        kind = "impression" if roll < 0.8 else "click" if roll < 0.95 else "conversion"
        resend = random.random() < 0.05 and Observed.feedback_ids
        event_id = random.choice(Observed.feedback_ids) if resend else f"fb-{uuid.uuid4().hex}"
        with self.client.post(
            f"/v1/banners/{banner_id}/feedback",
            json={"event_id": event_id, "kind": kind},
            headers=self.headers,
            name="feedback",
            catch_response=True,
        ) as response:
            if response.status_code != 202:
                response.failure(_problem(response))
                return
            if not response.json().get("recorded"):
                Observed.count("feedback duplicates (recorded=false)")
            with Observed.lock:
                Observed.feedback_ids.append(event_id)
            response.success()

    # Catalog --------------------------------------------------------------------------------

    def _get(self, path: str, name: str, params: dict[str, Any] | None = None) -> None:
        if params:
            path = f"{path}?{urlencode(params)}"
        with self.client.get(
            path, headers=self.headers, name=name, catch_response=True
        ) as response:
            if response.status_code == 200:
                response.success()
            else:
                response.failure(_problem(response))

    @task(60)
    def products_page(self) -> None:
        params: dict[str, Any] = {"offset": random.randrange(0, 650, 10), "limit": 24}
        if random.random() < 0.5:
            params = {"offset": 0, "limit": 24, "category": random.choice(CATEGORIES)}
        self._get("/v1/products", "products page", params)

    @task(80)
    def products_search(self) -> None:
        self._get("/v1/products/search", "products search", {"q": random.choice(QUERIES)})

    @task(120)
    def product_lookup(self) -> None:
        self._get(f"/v1/products/{random.choice(PRODUCT_IDS)}", "product lookup")

    @task(60)
    def shopper_read(self) -> None:
        self._get(f"/v1/shoppers/{random.choice(SHOPPER_IDS)}", "shopper read")

    @task(10)
    def shopper_profile_write(self) -> None:
        shopper = random.choice(SHOPPERS)
        interests = list(shopper["interests"])
        if random.random() < 1 / 3:  # a real change: one interest more (or one fewer)
            extra = random.choice([i for i in INTERESTS if i not in interests])
            interests = interests[:-1] if len(interests) > 1 else [*interests, extra]
        body = {
            "name": shopper.get("name", ""),
            "locale": shopper.get("locale", "en-US"),
            "segment": shopper["segment"],
            "interests": interests,
        }
        with self.client.put(
            f"/v1/shoppers/{shopper['id']}",
            json=body,
            headers=self.headers,
            name="shopper profile write",
            catch_response=True,
        ) as response:
            if response.status_code == 200:
                response.success()
            else:
                response.failure(_problem(response))

    @task(80)
    def events_batch(self) -> None:
        demo = random.random() < 0.1
        shopper = random.choice(SHOPPER_IDS) if demo else f"v{random.randrange(LONG_TAIL):04d}"
        events = []
        for _ in range(random.randint(1, 8)):
            roll = random.random()
            kind = "view" if roll < 0.8 else "add_to_cart" if roll < 0.95 else "purchase"
            events.append(
                {
                    "shopper_id": shopper,
                    "product_id": random.choice(PRODUCT_IDS),
                    "type": kind,
                    "event_id": f"ev-{uuid.uuid4().hex}",
                }
            )
        with self.client.post(
            "/v1/events",
            json={"events": events},
            headers=self.headers,
            name="events batch",
            catch_response=True,
        ) as response:
            if response.status_code == 202 and response.json().get("accepted") == len(events):
                Observed.count("events recorded", len(events))
                response.success()
            else:
                response.failure(_problem(response))

    # Templates and experiments ---------------------------------------------------------------

    @task(30)
    def templates(self) -> None:
        self._get("/v1/templates", "templates")

    @task(30)
    def experiment(self) -> None:
        self._get("/v1/experiments/home_hero", "experiment home_hero")


class CatalogAdmin(FastHttpUser):
    """The product feed: re-sends a slice of the catalog now and then (admin key)."""

    fixed_count = 1
    wait_time = between(40, 80)
    network_timeout = CLIENT_TIMEOUT_S
    connection_timeout = 30.0

    def on_start(self) -> None:
        self.headers = {"X-API-Key": Config.admin_key}
        self.catalog = {p["id"]: dict(p) for p in PRODUCTS}  # what this feed has sent
        self.syncs = 0

    @task
    def upsert_products(self) -> None:
        self.syncs += 1
        batch = [dict(self.catalog[pid]) for pid in random.sample(PRODUCT_IDS, 25)]
        if self.syncs % 3 == 0:  # a price change: a real update
            changed = batch[0]
            changed["price"] = round(max(1.0, changed["price"] + random.choice([-1.0, 1.0])), 2)
            self.catalog[changed["id"]] = changed
        with self.client.put(
            "/v1/products",
            json={"products": batch},
            headers=self.headers,
            name="products upsert (admin)",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(_problem(response))
                return
            result = response.json()
            Observed.count("products updated", len(result.get("updated", [])))
            Observed.count("products embedded", int(result.get("embedded", 0)))
            response.success()
