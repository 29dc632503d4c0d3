"""bf16 against float32 for each component, on this CPU's own path and with the AVX2 path forced.

A CPU without bf16 instructions (AVX2 only) emulates bf16, and the same model runs 5-30x
slower; the hardware profile (app/hardware.py) picks float32 there. This benchmark measures the
choice, side by side in one run:

- embedding (MiniLM, real product texts): products/s;
- the in-process model (SmolLM2-135M): prefill of a real ~600-token banner prompt and greedy
  decode tokens/s;
- the managed vLLM server: a real banner's latency and output tokens/s.

``native`` is the machine as it is; ``avx2`` forces torch and oneDNN onto AVX2 kernels
(``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``), which is what a CPU without native bf16
runs. Each (path, dtype) runs in a fresh process, since torch reads those variables once. On a
CPU without native bf16 both paths are the same, so ``avx2`` is measured only where they differ.

``python -m bench.dtypes --worker ...`` is one such process; it needs only torch and
transformers, and ``--random-weights`` builds the models from their config.json (speed does not
depend on the weights' values), so it also runs on a machine that has no copy of the weights.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DTYPES = ("float32", "bfloat16")
FORCED_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
EMBED_TEXTS = 64
DECODE_TOKENS = 64
VLLM_BANNERS = 4


# --- one process: embedding and in-process generation in one dtype -------------------------


def _load(kind: str, folder: Path, dtype: str, random_weights: bool) -> Any:
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    auto = AutoModel if kind == "embedder" else AutoModelForCausalLM
    if random_weights:
        config = AutoConfig.from_pretrained(folder)
        model = auto.from_config(config, dtype=getattr(torch, dtype))  # type: ignore[no-untyped-call]
    else:
        model = auto.from_pretrained(folder, dtype=getattr(torch, dtype))
    return model.eval()


def measure_embedding(folder: Path, dtype: str, texts: list[str], random_weights: bool) -> float:
    """Products/s: MiniLM's own recipe (256 word pieces, mean pooling), batches of 32."""
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = _load("embedder", folder, dtype, random_weights)

    def encode(batch: list[str]) -> None:
        tokens = tokenizer(
            batch, padding=True, truncation=True, max_length=256, return_tensors="pt"
        )
        with torch.inference_mode():
            hidden = model(**tokens).last_hidden_state
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            torch.nn.functional.normalize(pooled.float(), dim=1)

    encode(texts[:4])  # warm-up
    start = time.perf_counter()
    for first in range(0, len(texts), 32):
        encode(texts[first : first + 32])
    return len(texts) / (time.perf_counter() - start)


def measure_generation(
    folder: Path, dtype: str, messages: list[dict[str, str]], random_weights: bool
) -> dict[str, float]:
    """Prefill seconds of the prompt, and greedy decode tokens/s after it (KV cache on)."""
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = _load("llm", folder, dtype, random_weights)
    encoded: Any = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    ids = encoded["input_ids"]
    with torch.inference_mode():
        model(ids[:, :16])  # warm-up
        start = time.perf_counter()
        out = model(ids, use_cache=True)
        prefill = time.perf_counter() - start
        # Decode timed alone: one token a step on the prompt's KV cache, greedy.
        past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        for _ in range(DECODE_TOKENS):
            out = model(token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        decode = time.perf_counter() - start
    return {
        "prompt_tokens": int(ids.shape[1]),
        "prefill_s": prefill,
        "decode_tok_s": DECODE_TOKENS / decode,
    }


def worker(args: argparse.Namespace) -> None:
    import torch

    inputs = json.loads(Path(args.inputs).read_text())
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # the cores it may use (taskset)
    result: dict[str, Any] = {"torch_capability": torch.backends.cpu.get_cpu_capability()}
    for dtype in DTYPES:
        result[dtype] = {
            "embed_per_s": measure_embedding(
                Path(inputs["embedder"]), dtype, inputs["texts"], args.random_weights
            ),
            **measure_generation(
                Path(inputs["llm"]), dtype, inputs["messages"], args.random_weights
            ),
        }
    print(json.dumps(result))


def run_worker(inputs: Path, forced: bool, random_weights: bool = False) -> dict[str, Any]:
    env = {**os.environ, **(FORCED_AVX2 if forced else {})}
    command = [sys.executable, "-m", "bench.dtypes", "--worker", "--inputs", str(inputs)]
    if random_weights:
        command.append("--random-weights")
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --- the managed vLLM server in one dtype ---------------------------------------------------


async def vllm_banners(dtype: str, forced: bool, requests: list[Any]) -> dict[str, float]:
    """Start a server in ``dtype``, send real banner requests one at a time, stop it."""
    from dataclasses import replace

    from app.config import get_settings
    from app.generation.vllm_engine import VLLMEngine
    from app.generation.vllm_server import ManagedVLLM
    from app.runtime import vllm_server_config

    settings = get_settings()
    config = replace(vllm_server_config(settings), dtype=dtype)
    saved = dict(os.environ)
    os.environ.update(FORCED_AVX2 if forced else {})
    started = time.perf_counter()
    try:
        server = ManagedVLLM(config)
        server.start()
        server.wait_ready()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    ready_s = time.perf_counter() - started
    engine = VLLMEngine(server.base_url, settings.llm_name, timeout_s=600)
    latencies, tokens, generating = [], 0, 0.0
    try:
        await engine.generate(requests[0])  # warm-up: the schema's grammar compiles once
        for request in requests[1:]:
            start = time.perf_counter()
            result = await engine.generate(request)
            latencies.append(time.perf_counter() - start)
            tokens += result.output_tokens
            generating += result.elapsed_ms / 1000
    finally:
        await engine.close()
        server.stop()
    latencies.sort()
    return {
        "ready_s": ready_s,
        "banner_p50_s": latencies[len(latencies) // 2],
        "out_tok_s": tokens / max(generating, 1e-9),
    }


# --- the run ----------------------------------------------------------------------------------


def real_inputs(folder: Path) -> tuple[Path, list[Any]]:
    """Product texts, one rendered banner prompt for the workers, and banner requests for vLLM."""
    from app.config import get_settings
    from app.generation.engine import GenerationRequest
    from app.models import resolve_embedding_model
    from app.pipeline import BannerRequest
    from app.retrieval.embedder import product_text
    from app.runtime import build_pipeline

    settings = get_settings()
    pipeline = build_pipeline(settings, with_engine=False, with_changes=False)
    requests = []
    for shopper in ("u004", "u010", "u020", "u030", "u041")[: VLLM_BANNERS + 1]:
        prepared = pipeline.prepare(BannerRequest(shopper_id=shopper))
        assert prepared.prompt is not None
        requests.append(
            GenerationRequest(
                messages=prepared.prompt.messages,
                schema=prepared.output_model,
                sampling=prepared.template.header.sampling,
                seed=7,
            )
        )
    inputs = {
        "embedder": str(resolve_embedding_model(settings.embedding_model)),
        "llm": str(settings.llm_folder),
        "texts": [product_text(p) for p in pipeline.catalog.products[:EMBED_TEXTS]],
        "messages": [{"role": r, "content": c} for r, c in requests[0].messages],
    }
    path = folder / "dtype-inputs.json"
    path.write_text(json.dumps(inputs))
    return path, requests


def comparison_rows(
    paths: list[str],
    workers: dict[str, dict[str, Any]],
    served: dict[tuple[str, str], dict[str, float]],
) -> list[list[object]]:
    """One row per (path, metric): float32, bf16, bf16's speed relative to float32, the faster."""
    prompt_tokens = workers[paths[0]]["float32"]["prompt_tokens"]

    def worker_metric(key: str) -> Callable[[str, str], float]:
        return lambda path, dtype: float(workers[path][dtype][key])

    def served_metric(key: str) -> Callable[[str, str], float]:
        return lambda path, dtype: served[path, dtype][key]

    # (component, metric, how to read it, whether higher is better)
    metrics: list[tuple[str, str, Callable[[str, str], float], bool]] = [
        ("embedding", "products/s", worker_metric("embed_per_s"), True),
        ("in-process", f"prefill s ({prompt_tokens} tokens)", worker_metric("prefill_s"), False),
        ("in-process", "decode tokens/s", worker_metric("decode_tok_s"), True),
    ]
    if served:
        metrics += [
            ("vLLM", "banner p50 s", served_metric("banner_p50_s"), False),
            ("vLLM", "output tokens/s", served_metric("out_tok_s"), True),
            ("vLLM", "ready s", served_metric("ready_s"), False),
        ]
    rows: list[list[object]] = []
    for path in paths:
        for component, metric, read, higher_is_better in metrics:
            fp32, bf16 = read(path, "float32"), read(path, "bfloat16")
            faster = "bf16" if (bf16 > fp32) == higher_is_better else "fp32"
            ratio = bf16 / fp32 if higher_is_better else fp32 / bf16
            rows.append([component, metric, path, fp32, bf16, ratio, faster])
    return rows


HEADER = ["component", "metric", "path", "float32", "bfloat16", "bf16 speed vs fp32", "faster"]
RATIO_NOTE = "'bf16 speed vs fp32' > 1 means bf16 is faster (rates divided, times inverted)"
WORKLOAD_NOTE = (
    f"embedding: {EMBED_TEXTS} demo product texts, batches of 32; in-process: a real "
    f"hero_banner prompt, greedy decode of {DECODE_TOKENS} tokens"
)


def main() -> None:
    import tempfile

    from app.config import get_settings
    from app.hardware import detect
    from app.runtime import hardware_choices
    from bench.common import write_results

    profile = detect()
    paths = ["native", "avx2"] if profile.cpu.native_bf16 else ["native"]
    with tempfile.TemporaryDirectory() as folder:
        inputs, requests = real_inputs(Path(folder))
        workers = {path: run_worker(inputs, forced=path == "avx2") for path in paths}
        served = {
            (path, dtype): asyncio.run(vllm_banners(dtype, path == "avx2", requests))
            for path in paths
            for dtype in DTYPES
        }
    choice = {name: c.dtype for name, c in hardware_choices(get_settings(), profile).items()}
    write_results(
        "dtypes",
        "bf16 vs float32 per component, native and forced-AVX2 paths",
        HEADER,
        comparison_rows(paths, workers, served),
        [
            f"torch kernels on the native path: {workers['native']['torch_capability']}",
            f"auto picks here: {choice}",
            RATIO_NOTE,
            "avx2 path (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2): "
            + (
                "measured"
                if "avx2" in paths
                else "same as native on this CPU (it has no bf16 instructions)"
            ),
            WORKLOAD_NOTE + f"; vLLM: {VLLM_BANNERS} real banners one at a time after a "
            "warm-up, --enforce-eager",
        ],
    )


def report(name: str, machine: str, native: Path, avx2: Path) -> None:
    """A table from worker outputs measured elsewhere (`--worker` run on another machine, e.g.
    one with native bf16), for the results folder."""
    from bench.common import write_results

    workers = {"native": json.loads(native.read_text()), "avx2": json.loads(avx2.read_text())}
    write_results(
        name,
        f"bf16 vs float32, in-process components, on {machine}",
        HEADER,
        comparison_rows(["native", "avx2"], workers, {}),
        [
            f"measured on {machine} by `python -m bench.dtypes --worker --random-weights` "
            "(each model built from its config.json: speed does not depend on the weights)",
            RATIO_NOTE,
            WORKLOAD_NOTE,
        ],
        machine=machine,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", action="store_true", help="measure one (path) in-process")
    parser.add_argument("--inputs", help="the JSON file real_inputs() writes")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--report", metavar="NAME", help="tabulate two worker outputs as NAME")
    parser.add_argument("--machine", help="with --report: where they were measured")
    parser.add_argument("--native", type=Path, help="with --report: the native path's output")
    parser.add_argument("--avx2", type=Path, help="with --report: the forced-AVX2 output")
    parsed = parser.parse_args()
    if parsed.worker:
        worker(parsed)
    elif parsed.report:
        report(parsed.report, parsed.machine, parsed.native, parsed.avx2)
    else:
        main()
