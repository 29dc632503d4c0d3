"""What the vLLM engine sends: the schema as response_format, never guided_json."""

from __future__ import annotations

import json

from app.config import Settings
from app.generation.engine import GenerationRequest, SamplingParams
from app.generation.schemas import output_model
from app.generation.vllm_engine import VLLMEngine
from app.generation.vllm_server import ManagedVLLM, VLLMServerConfig


def test_schema_travels_as_response_format() -> None:
    schema = output_model("banner", 6)
    request = GenerationRequest(
        messages=(("user", "hi"),), schema=schema, sampling=SamplingParams(), seed=1
    )
    sent = VLLMEngine.response_format(request)
    assert sent["type"] == "json_schema"
    body = sent["json_schema"]["schema"]
    assert body["properties"]["products"]["items"]["enum"] == [1, 2, 3, 4, 5, 6]
    assert body["properties"]["headline"]["maxLength"] == 60
    assert "guided_json" not in json.dumps(sent)


def test_the_grammar_holds_the_copy_rules_with_the_lengths() -> None:
    """Each text field carries its pattern and its maxLength: the guidance backend (the managed
    server's) honours both at once, so what the guards would refuse is never generated."""
    props = output_model("banner", 6).model_json_schema()["properties"]
    for name in ("headline", "subheadline", "cta"):
        assert props[name]["maxLength"] > 0 and props[name]["pattern"].startswith("^")
        assert "0-9" in props[name]["pattern"], "no digits (a negated class) unless asked"
    assert props["badge"]["anyOf"][0]["pattern"] == props["headline"]["pattern"]
    assert props["cta"]["maxLength"] == 24
    assert props["cta"]["pattern"].endswith("{0,2}[.!]?$"), "one to three words"
    digits = output_model("banner", 6, digits=True).model_json_schema()["properties"]
    assert "0-9" not in digits["headline"]["pattern"] + digits["cta"]["pattern"]


def test_managed_server_command_has_the_cpu_fixes(tmp_path) -> None:
    server = ManagedVLLM(
        VLLMServerConfig(model_dir=tmp_path, served_name="m", port=9, log_path=tmp_path / "log")
    )
    command = server.command()
    assert command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert "--enforce-eager" in command
    assert command[command.index("--host") + 1] == "127.0.0.1"
    config = json.loads(command[command.index("--structured-outputs-config") + 1])
    assert config == {"backend": "guidance", "disable_any_whitespace": True}


def test_the_server_runs_in_the_dtype_and_memory_it_is_given(tmp_path) -> None:
    base = {"model_dir": tmp_path, "served_name": "m", "port": 9, "log_path": tmp_path / "l"}
    cpu = ManagedVLLM(VLLMServerConfig(**base, dtype="float32", kv_cache_gb=3))
    command = cpu.command()
    assert command[command.index("--dtype") + 1] == "float32"
    assert "--gpu-memory-utilization" not in command
    assert cpu.config.environment()["VLLM_CPU_KVCACHE_SPACE"] == "3"
    gpu = ManagedVLLM(
        VLLMServerConfig(**base, dtype="bfloat16", device="cuda", gpu_memory_utilization=0.5)
    )
    command = gpu.command()
    # CUDA graphs on a GPU (no eager mode), a share of its memory, no CPU KV-cache variable.
    assert "--enforce-eager" not in command
    assert command[command.index("--gpu-memory-utilization") + 1] == "0.5"
    assert command[command.index("--dtype") + 1] == "bfloat16"
    assert "VLLM_CPU_KVCACHE_SPACE" not in gpu.config.environment()


def test_the_managed_server_follows_the_hardware_profile(tmp_path, monkeypatch) -> None:
    from app import runtime
    from app.hardware import CpuInfo, HardwareProfile

    folder = tmp_path / "model"
    folder.mkdir()
    monkeypatch.setattr(runtime, "is_prepared", lambda _: True)
    zen3 = CpuInfo("zen3", "x86_64", 2, frozenset({"avx2"}), "AVX2", "", 40.0)
    monkeypatch.setattr(runtime, "detect", lambda: HardwareProfile(zen3))
    settings = Settings(llm_dir=folder, cache_dir=tmp_path)
    config = runtime.vllm_server_config(settings, port=9)
    assert (config.dtype, config.device, config.kv_cache_gb) == ("float32", "cpu", 4)
    explicit = Settings(
        llm_dir=folder, cache_dir=tmp_path, vllm_dtype="bfloat16", vllm_kv_cache_gb=1
    )
    config = runtime.vllm_server_config(explicit, port=9)
    assert (config.dtype, config.kv_cache_gb) == ("bfloat16", 1)


def test_serving_beside_a_managed_server_shrinks_the_torch_pool(monkeypatch) -> None:
    import torch
    import uvicorn
    from click.testing import CliRunner

    import app.server.app
    from app.cli import cli

    monkeypatch.setattr(app.server.app, "create_app", lambda settings: None)
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)
    # The process-wide logging and tracing `serve` sets up stay out of the test process.
    monkeypatch.setattr("app.logs.configure_logging", lambda **kwargs: None)
    monkeypatch.setattr("app.tracing.configure_tracing", lambda mode: False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert CliRunner().invoke(cli, ["serve", "--engine", "transformers"]).exit_code == 0
        assert torch.get_num_threads() == 2  # an in-process model keeps every core
        assert CliRunner().invoke(cli, ["serve", "--engine", "vllm"]).exit_code == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
