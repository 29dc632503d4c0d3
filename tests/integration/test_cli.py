"""The `marquee` command as a user runs it: real process, real exit codes, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from app.config import PROJECT_ROOT
from app.prompting.templates import TemplateRegistry

pytestmark = pytest.mark.integration


# The commands below are about what each prints and refuses, not about best-of-n: two samples
# a banner, where the defaults write eight in-process (tests/integration/test_real_models.py
# and the smoke eval run best-of-n as configured). Saves about three minutes of the suite.
QUICK = {"MARQUEE_BEST_OF": "2"}


def marquee(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **QUICK, **env},
    )


def test_candidates_explains_the_selection() -> None:
    run = marquee("candidates", "--user", "u004", "--json")
    assert run.returncode == 0, run.stderr
    shown = json.loads(run.stdout)
    assert shown["known"] and not shown["cold_start"]
    assert len(shown["candidates"]) == 6
    assert {"semantic", "collaborative", "popularity", "relevance", "mmr"} <= set(
        shown["candidates"][0]["scores"]
    )


def test_unknown_template_is_one_line_and_exit_2() -> None:
    run = marquee("candidates", "--user", "u004", "--template", "nope")
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith("error: unknown template 'nope'")
    assert "Traceback" not in run.stderr


def test_bad_catalog_row_is_one_line_with_the_line_number(tmp_path: Path) -> None:
    bad = tmp_path / "products.jsonl"
    bad.write_text('{"id": "P1", "title": "x"}\n')
    run = marquee("candidates", "--user", "u004", MARQUEE_PRODUCTS_PATH=str(bad))
    assert run.returncode == 2
    assert "products.jsonl:1: field 'brand'" in run.stderr
    assert "Traceback" not in run.stderr


# --- Every command the README shows, run as a user runs it ---------------------------------


def catalog_by_id() -> dict[str, dict[str, object]]:
    lines = (PROJECT_ROOT / "data" / "products.jsonl").read_text().splitlines()
    return {row["id"]: row for row in map(json.loads, lines)}


def test_generate_json_with_filters_prints_one_grounded_banner_per_line() -> None:
    run = marquee(
        "generate",
        "--user", "u004",
        "--user", "someone-new",
        "--json",
        "--include-category", "Coffee & Tea",
        "--max-price", "60",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    banners = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    assert [b["shopper_id"] for b in banners] == ["u004", "someone-new"]
    catalog = catalog_by_id()
    for banner in banners:
        assert banner["headline"] and banner["cta"] and banner["products"]
        for shown in banner["products"]:
            stored = catalog[shown["id"]]  # a real product, with its real facts
            assert shown["price"] == stored["price"] and shown["title"] == stored["title"]
            assert stored["category"] == "Coffee & Tea" and float(str(stored["price"])) <= 60


def test_generate_prints_readable_banners_and_variants() -> None:
    run = marquee("generate", "--user", "u010", "--template", "grid_heading", "--count", "2")
    assert run.returncode == 0, run.stderr[-3000:]
    headers = [line for line in run.stdout.splitlines() if line.startswith("── ")]
    assert len(headers) == 2 and all("grid_heading v" in h for h in headers)
    assert "variant 0" in headers[0] and "variant 1" in headers[1]


def test_make_demo_prints_every_template_for_warm_and_cold_shoppers() -> None:
    run = subprocess.run(
        ["make", "demo"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **QUICK},
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    lines = run.stdout.splitlines()
    headers = [line for line in lines if line.startswith("── ")]
    # A section with nothing for the shopper (nothing back in stock) says so, with no banner.
    nothing = [line for line in lines if line.startswith("·· ")]
    assert all("nothing to show (back_in_stock)" in line for line in nothing), nothing
    templates = set(TemplateRegistry.from_folder(PROJECT_ROOT / "prompts").names)
    assert len(templates) == 7
    named = {name for name in templates if any(f" {name} v" in h for h in headers)}
    assert named | {"back_in_stock"} == templates
    shoppers = [h.split("shopper ")[1].split()[0] for h in headers + nothing]
    # One shopper with a history and one without (cold start), every template for each.
    assert len(set(shoppers)) == 2 and len(headers) + len(nothing) == 2 * len(templates)
    # The themed hero says what it is about.
    assert any(line.strip().startswith("theme: ") for line in lines)
    histories = {
        row["id"]: row.get("history")
        for row in map(
            json.loads, (PROJECT_ROOT / "data" / "shoppers.jsonl").read_text().splitlines()
        )
    }
    assert sorted(bool(histories[s]) for s in set(shoppers)) == [False, True]


def test_index_build_embeds_the_catalog_then_reuses_it(tmp_path: Path) -> None:
    index = str(tmp_path / "index")
    built = marquee("index", "build", MARQUEE_INDEX_PATH=index)
    assert built.returncode == 0, built.stderr[-3000:]
    assert f"index built: {len(catalog_by_id())} products x 384 dims" in built.stdout
    # The demo catalog is under EASE's limit: auto fits EASE, and keeps it beside the index.
    assert "collaborative model fitted: ease" in built.stdout
    assert (tmp_path / "index" / "collaborative.npz").is_file()
    again = marquee("index", "build", MARQUEE_INDEX_PATH=index)
    assert again.returncode == 0 and "index fresh, reused" in again.stdout
    assert "collaborative model fresh, reused: ease" in again.stdout
    forced = marquee("index", "build", "--force", MARQUEE_INDEX_PATH=index)
    assert forced.returncode == 0 and "index built" in forced.stdout
    assert "collaborative model fitted" in forced.stdout


def test_model_prepare_reuses_the_prepared_folder() -> None:
    run = marquee("model", "prepare")
    assert run.returncode == 0, run.stderr[-3000:]
    # The packaged model with the shipped adapter merged in: what every engine serves.
    assert "generation model: SmolLM2-135M-Instruct + house-style ->" in run.stdout
    assert "SmolLM2-135M-Instruct-house-style" in run.stdout
    assert "embedding model:" in run.stdout


def test_keys_create_prints_a_key_that_authenticates(tmp_path: Path) -> None:
    import asyncio

    from app.store.db import Database
    from app.store.repositories import ApiKeyStore

    database = f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}"
    run = marquee(
        "keys", "create", "--name", "cms-prod", "--scope", "cms", MARQUEE_DATABASE_URL=database
    )
    assert run.returncode == 0, run.stderr[-3000:]
    key = run.stdout.strip()

    async def verify() -> tuple[str, frozenset[str]] | None:
        async with Database.upgraded(database) as db:
            return await ApiKeyStore(db).verify(key)

    assert asyncio.run(verify()) == ("cms-prod", frozenset({"cms"}))
    bad = marquee("keys", "create", "--name", "x", "--scope", "root", MARQUEE_DATABASE_URL=database)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_doctor_prints_the_profile_choices_and_measured_speeds() -> None:
    run = marquee("doctor")
    assert run.returncode == 0, run.stderr[-3000:]
    for component in ("embedder:", "llm:", "vllm:"):
        assert any(line.startswith(component) for line in run.stdout.splitlines())
    probes = [line for line in run.stdout.splitlines() if line.startswith("probe ")]
    assert len(probes) == 2
    for line in probes:
        rate = float(line.split(": ")[1].split()[0])
        assert rate > 0, line


def test_doctor_picks_float32_when_torch_runs_the_avx2_path() -> None:
    """What a CPU without native bf16 looks like, forced on any x86 machine."""
    run = marquee("doctor", "--json", "--no-probe", ATEN_CPU_CAPABILITY="avx2")
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    if report["gpus"]:
        pytest.skip("a GPU decides the dtype here")
    assert report["cpu"]["torch_capability"] in ("AVX2", "DEFAULT")
    assert report["cpu"]["native_bf16"] is False
    assert {c["dtype"] for c in report["choices"].values()} == {"float32"}
    explicit = marquee(
        "doctor", "--json", "--no-probe", ATEN_CPU_CAPABILITY="avx2", MARQUEE_LLM_DTYPE="bfloat16"
    )
    assert json.loads(explicit.stdout)["choices"]["llm"]["dtype"] == "bfloat16"


def test_vllm_serve_runs_the_managed_servers_recipe_in_the_foreground(tmp_path: Path) -> None:
    """The CPU image's entry point: vLLM alone, in the dtype the hardware profile picks."""
    import signal
    import time

    import httpx

    from app.config import Settings
    from app.generation.vllm_server import free_port
    from app.runtime import hardware_choices

    port = free_port()
    log = tmp_path / "vllm.log"  # a file, not a pipe: vLLM's start-up log would fill a pipe
    server = subprocess.Popen(
        [sys.executable, "-m", "app", "vllm", "serve", "--port", str(port)],
        cwd=PROJECT_ROOT,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        assert server.poll() is None, log.read_text()[-3000:]
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()
        assert [m["id"] for m in models["data"]] == ["SmolLM2-135M-Instruct"]
        # The process became vLLM itself (exec), with the dtype chosen for this machine.
        argv = Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")
        assert b"vllm.entrypoints.openai.api_server" in argv
        dtype = hardware_choices(Settings())["vllm"].dtype
        assert argv[argv.index(b"--dtype") + 1].decode() == dtype
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


# --- API keys over their life, from the command line ---------------------------------------


def keys_json(database: str) -> list[dict[str, object]]:
    run = marquee("keys", "list", "--json", MARQUEE_DATABASE_URL=database)
    assert run.returncode == 0, run.stderr[-3000:]
    listed: list[dict[str, object]] = json.loads(run.stdout)
    return listed


def verify_key(database: str, key: str) -> tuple[str, frozenset[str]] | None:
    import asyncio

    from app.store.repositories import ApiKeyStore

    return asyncio.run(ApiKeyStore.using(database, lambda store: store.verify(key)))


def test_keys_list_rotate_and_revoke(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    database = f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}"
    assert keys_json(database) == []
    made = marquee(
        "keys", "create", "--name", "cms-prod", "--scope", "cms", "--scope", "marketer",
        "--expires-days", "30", MARQUEE_DATABASE_URL=database,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr[-3000:]
    old = made.stdout.strip()
    old_id = old.split("_")[1]
    assert verify_key(database, old) == ("cms-prod", frozenset({"cms", "marketer"}))

    [listed] = keys_json(database)
    assert listed["id"] == old_id and listed["status"] == "active"
    assert listed["scopes"] == ["cms", "marketer"] and listed["last_used_at"] is not None
    expires = datetime.fromisoformat(str(listed["expires_at"]))
    assert abs(expires - (datetime.now(UTC) + timedelta(days=30))) < timedelta(minutes=5)
    assert "key_hash" not in listed and old.split("_", 2)[2] not in json.dumps(listed)

    rotated = marquee("keys", "rotate", old_id, MARQUEE_DATABASE_URL=database)
    assert rotated.returncode == 0, rotated.stderr[-3000:]
    new = rotated.stdout.strip()
    assert new.startswith("mq_") and new != old and len(rotated.stdout.splitlines()) == 1
    assert verify_key(database, old) is None
    assert verify_key(database, new) == ("cms-prod", frozenset({"cms", "marketer"}))
    statuses = {row["id"]: (row["name"], row["status"]) for row in keys_json(database)}
    assert statuses == {old_id: ("cms-prod", "revoked"), new.split("_")[1]: ("cms-prod", "active")}

    table = marquee("keys", "list", MARQUEE_DATABASE_URL=database)
    assert table.returncode == 0, table.stderr[-3000:]
    header, *rows = table.stdout.splitlines()
    assert header.split() == [
        "ID",
        "NAME",
        "SCOPES",
        "CREATED",
        "EXPIRES",
        "LAST",
        "USED",
        "STATUS",
    ]
    assert [row.split()[0] for row in rows] == [old_id, new.split("_")[1]]
    assert rows[0].split()[-1] == "revoked" and rows[1].split()[-1] == "active"
    assert rows[1].split()[2] == "cms,marketer" and "never" in rows[1]  # no expiry given

    revoked = marquee("keys", "revoke", new.split("_")[1], MARQUEE_DATABASE_URL=database)
    assert revoked.returncode == 0, revoked.stderr[-3000:]
    assert verify_key(database, new) is None


@pytest.mark.parametrize(
    "args",
    [
        ("keys", "revoke", "nosuchid"),
        ("keys", "rotate", "nosuchid"),
        ("keys", "create", "--name", "x", "--scope", "root"),
        ("keys", "create", "--name", "x", "--scope", "cms", "--expires-days", "0"),
        ("keys", "create", "--name", "x", "--scope", "cms", "--expires-days", "many"),
        ("keys", "create", "--name", "x", "--scope", "cms", "--expires-days", "99999999999"),
        ("keys", "rotate", "REVOKED", "--expires-days", "-1"),
        ("keys", "rotate", "REVOKED"),
    ],
)
def test_keys_errors_are_one_line_and_exit_2(tmp_path: Path, args: tuple[str, ...]) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}"
    made = marquee(
        "keys", "create", "--name", "gone", "--scope", "cms", MARQUEE_DATABASE_URL=database
    )
    gone = made.stdout.strip().split("_")[1]
    assert marquee("keys", "revoke", gone, MARQUEE_DATABASE_URL=database).returncode == 0
    run = marquee(*(gone if a == "REVOKED" else a for a in args), MARQUEE_DATABASE_URL=database)
    assert run.returncode == 2, run.stderr[-3000:]
    assert run.stdout == "" and "Traceback" not in run.stderr
    [line] = run.stderr.strip().splitlines()
    assert line.startswith("error: ")
    # Nothing was made or changed by the failed command.
    assert [(row["id"], row["status"]) for row in keys_json(database)] == [(gone, "revoked")]


def test_webhooks_new_key_and_seal_secrets(tmp_path: Path) -> None:
    import asyncio

    from app.store.db import Database, WebhookEndpointRecord
    from app.store.sealing import Sealer
    from app.store.webhooks import WebhookStore

    database = f"sqlite+aiosqlite:///{tmp_path / 'hooks.db'}"

    async def stored() -> dict[str, str]:
        async with Database.upgraded(database) as db, db.sessions() as session:
            rows = await session.scalars(select(WebhookEndpointRecord))
            return {row.url: row.secret for row in rows}

    async def create(url: str) -> str:
        async with Database.upgraded(database) as db:
            endpoint = await WebhookStore(db).create(url, ["job.finished"], created_by="t")
            return endpoint.secret

    secret = asyncio.run(create("https://hooks.example/a"))
    made = marquee("webhooks", "new-key")
    assert made.returncode == 0, made.stderr[-3000:]
    key = made.stdout.strip()
    assert Sealer([key]).sealing and marquee("webhooks", "new-key").stdout.strip() != key

    unkeyed = marquee("webhooks", "seal-secrets", MARQUEE_DATABASE_URL=database)
    assert unkeyed.returncode == 1 and "Traceback" not in unkeyed.stderr
    assert unkeyed.stderr.strip() == ("error: no key to seal with: set MARQUEE_WEBHOOK_SECRET_KEYS")
    assert asyncio.run(stored()) == {"https://hooks.example/a": secret}  # untouched

    bad = marquee(
        "webhooks", "seal-secrets", MARQUEE_DATABASE_URL=database,
        MARQUEE_WEBHOOK_SECRET_KEYS="too-short",
    )  # fmt: skip
    assert bad.returncode == 2 and "key 1 is not a Fernet key" in bad.stderr
    assert "Traceback" not in bad.stderr

    sealed = marquee(
        "webhooks", "seal-secrets", MARQUEE_DATABASE_URL=database, MARQUEE_WEBHOOK_SECRET_KEYS=key
    )
    assert sealed.returncode == 0, sealed.stderr[-3000:]
    assert sealed.stdout.strip() == "1 webhook secrets sealed under the first key (1 were plain)"
    [now] = asyncio.run(stored()).values()
    assert now.startswith("fernet:") and secret not in now
    assert Sealer([key]).open(now) == secret
