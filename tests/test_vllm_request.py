"""What the vLLM engine sends: the schema as response_format, never guided_json."""

from __future__ import annotations

import json
import logging

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


def test_managed_server_command_has_the_cpu_fixes(tmp_path) -> None:
    server = ManagedVLLM(
        VLLMServerConfig(model_dir=tmp_path, served_name="m", port=9, log_path=tmp_path / "log")
    )
    command = server.command()
    assert command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert "--enforce-eager" in command
    assert command[command.index("--host") + 1] == "127.0.0.1"
    config = json.loads(command[command.index("--structured-outputs-config") + 1])
    assert config == {"backend": "xgrammar", "disable_any_whitespace": True}


def test_serving_beside_a_managed_server_shrinks_the_torch_pool(monkeypatch) -> None:
    import torch
    import uvicorn
    from click.testing import CliRunner

    import app.api.app
    from app.cli import cli

    monkeypatch.setattr(app.api.app, "create_app", lambda settings: None)
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: None)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert CliRunner().invoke(cli, ["serve", "--engine", "transformers"]).exit_code == 0
        assert torch.get_num_threads() == 2  # an in-process model keeps every core
        assert CliRunner().invoke(cli, ["serve", "--engine", "vllm"]).exit_code == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
