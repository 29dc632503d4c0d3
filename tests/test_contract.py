"""The HTTP contract, fuzzed: Schemathesis reads the service's own OpenAPI document
(/docs/openapi.json) and sends requests generated from it (valid ones, invalid ones, boundary
values) to every documented operation: reads and writes, the studio's template endpoints too.
The studio's HTML pages and /metrics are not in the document, so not in the run.

Every answer must keep the contract: no 5xx, a documented status code, the documented content
type, and a body that validates against the documented schema (problems included).

Generation uses the scripted engine (tests/test_pipeline.py's ScriptedEngine) and the tiny test
catalog: this fuzzes the HTTP contract, not the model. The server is the real one (uvicorn on a
free port, in a thread), over SQLite, called with a valid admin key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from litestar import Litestar
from litestar.serialization import encode_json
from schemathesis.checks import CheckFunction, not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from app.catalog.store import Catalog, ShopperStore
from app.config import Settings
from app.domain import EventType, Shopper
from app.pipeline import Pipeline
from app.server.app import create_app
from app.server.errors import PROBLEM_TYPES, TYPE_PREFIX
from app.store.repositories import ApiKeyStore
from tests.conftest import TINY_PRODUCTS, event
from tests.fakes import GOOD, ScriptedEngine, make_pipeline

# Hypothesis examples per operation in the fuzzing phase; the coverage phase adds its own
# (boundary values, missing and wrong-typed parameters). Together: well over 1,000 cases.
EXAMPLES_PER_OPERATION = 40
MIN_CASES = 1000
CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    ignored_auth,  # the documented API key is really required
    unsupported_method,
    missing_required_header,
]


def _never_loaded(_: Settings) -> Pipeline:
    raise AssertionError("this app only describes itself; it is never started")


def _document() -> dict[str, Any]:
    """The OpenAPI document, from an app that is built but never started (pytest needs the
    operations when it collects; schemathesis 4.32's fixture-loaded schemas fail on pytest 9.2,
    which renamed Node._nodeid). The served document is checked to be the same one."""
    with tempfile.TemporaryDirectory() as cache:
        app = create_app(Settings(cache_dir=Path(cache)), _never_loaded)
        document: dict[str, Any] = json.loads(encode_json(app.openapi_schema.to_schema()))
        return document  # as served: JSON (tuples become lists)


DOCUMENT = _document()
schema = schemathesis.openapi.from_dict(DOCUMENT)
TALLY: Counter[str] = Counter()  # cases run, per operation


def _operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            if method in {"get", "put", "post", "delete", "patch"}:
                yield path, method.upper(), operation


def test_every_v1_operation_requires_the_api_key_and_documents_its_problems() -> None:
    assert DOCUMENT["components"]["securitySchemes"]["apiKey"] == {
        "type": "apiKey",
        "name": "X-API-Key",
        "in": "header",
        "description": DOCUMENT["components"]["securitySchemes"]["apiKey"]["description"],
    }
    for path, method, operation in _operations():
        label = f"{method} {path}"
        if not path.startswith("/v1/"):
            assert "security" not in operation, label  # /healthz, /readyz: for probes
            continue
        assert operation["security"] == [{"apiKey": []}], label
        statuses = {int(status) for status in operation["responses"]}
        assert {401, 403, 429, 503} <= statuses, label
        has_input = bool(operation.get("parameters")) or "requestBody" in operation
        assert (400 in statuses) == has_input, label
        assert (413 in statuses) == ("requestBody" in operation), label
        for status in statuses - {200, 201, 202, 204, 304}:
            content = operation["responses"][str(status)]["content"]
            assert content == {
                "application/problem+json": {
                    "schema": {"$ref": "#/components/schemas/ProblemDetails"},
                    "examples": content["application/problem+json"]["examples"],
                }
            }, f"{label} {status}"


def test_the_problem_schema_lists_every_problem_type() -> None:
    problem_type = DOCUMENT["components"]["schemas"]["ProblemDetails"]["properties"]["type"]
    assert problem_type["enum"] == [TYPE_PREFIX + slug for slug in PROBLEM_TYPES]
    for slug, (status, title) in PROBLEM_TYPES.items():
        assert f"{TYPE_PREFIX}{slug}: {status} {title}" in problem_type["description"]


@contextlib.contextmanager
def serving(app: Litestar) -> Iterator[str]:
    """The app under uvicorn on a free port, in a thread; its base URL once it is ready."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            time.sleep(0.05)
        else:
            raise RuntimeError("the service did not become ready")
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The running service and an admin key: one for every operation (the fuzzed writes pile up
    in one database, as a real client's would)."""
    folder = tmp_path_factory.mktemp("contract")
    settings_ = Settings(
        cache_dir=folder / "cache",
        database_url=f"sqlite+aiosqlite:///{folder / 'contract.db'}",
        homepage_sections=["hero_banner", "grid_heading"],
    )
    admin = asyncio.run(ApiKeyStore.create_in(settings_.database, "contract-admin", ["admin"]))
    engine = ScriptedEngine([GOOD])  # then GOOD for ever
    # A shopper with a history: lint renders every saved template for it.
    history = (event("C1", EventType.VIEW, 2), event("C3", EventType.PURCHASE, 1))
    shoppers = ShopperStore([Shopper(id="coffee_fan", segment="regular", history=history)])
    app = create_app(
        settings_,
        lambda s: make_pipeline(engine, Catalog(TINY_PRODUCTS), shoppers, s),
        jobs_in_process=True,  # the fuzzed jobs are made by this pipeline, not Ray workers
    )
    with serving(app) as base:
        assert httpx.get(f"{base}/docs/openapi.json").json() == DOCUMENT
        yield base, admin
    # Only when the whole contract ran (not under -k): it ran enough cases, on every operation.
    if len(TALLY) == len(list(schema.get_all_operations())):
        total = sum(TALLY.values())
        assert total >= MIN_CASES, f"only {total} cases ran: {dict(TALLY)}"
        print(f"\ncontract: {total} cases over {len(TALLY)} operations")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    database=None,  # no example database under .hypothesis/: every run starts fresh
    # Filtering and slow examples are expected here (patterns, a real server): not a problem.
    suppress_health_check=list(HealthCheck),
)
def test_contract(case: schemathesis.Case[Any], service: tuple[str, str]) -> None:
    base, admin = service
    TALLY[case.operation.label] += 1
    case.call_and_validate(base_url=base, headers={"X-API-Key": admin}, checks=CHECKS)
