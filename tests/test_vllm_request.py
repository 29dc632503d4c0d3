"""What the vLLM engine sends: the schema as response_format, never guided_json."""

from __future__ import annotations

import json

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


def test_managed_server_command_has_the_cpu_fixes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = ManagedVLLM(
        VLLMServerConfig(model_dir=tmp_path, served_name="m", port=9, log_path=tmp_path / "log")
    )
    command = server.command()
    assert command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert "--enforce-eager" in command
    assert command[command.index("--host") + 1] == "127.0.0.1"
    config = json.loads(command[command.index("--structured-outputs-config") + 1])
    assert config == {"backend": "xgrammar", "disable_any_whitespace": True}
