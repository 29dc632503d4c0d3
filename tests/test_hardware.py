"""The hardware profile's decision table: which dtype each kind of machine gets, and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import Settings
from app.hardware import CpuInfo, GpuInfo, HardwareProfile, read_cpu_flags
from app.runtime import hardware_choices


def cpu(
    *flags: str,
    torch_capability: str = "AVX512",
    onednn: str = "",
    arch: str = "x86_64",
    cores: int = 2,
) -> CpuInfo:
    return CpuInfo(
        model="test cpu",
        arch=arch,
        cores=cores,
        flags=frozenset(flags),
        torch_capability=torch_capability,
        onednn_max_isa=onednn,
        memory_gb=24.0,
    )


SAPPHIRE_RAPIDS = cpu("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
COOPER_LAKE = cpu("avx2", "avx512f", "avx512_bf16")
SKYLAKE_SERVER = cpu("avx2", "avx512f")  # AVX-512 but no bf16
ZEN3 = cpu("avx2", "fma", torch_capability="AVX2")


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        (SAPPHIRE_RAPIDS, "bfloat16"),
        (COOPER_LAKE, "bfloat16"),
        (SKYLAKE_SERVER, "float32"),
        (ZEN3, "float32"),
        # A bf16 CPU forced onto torch's AVX2 kernels (ATEN_CPU_CAPABILITY=avx2): emulated.
        (cpu("avx2", "avx512f", "avx512_bf16", torch_capability="AVX2"), "float32"),
        # ... or with oneDNN capped below bf16 (ONEDNN_MAX_CPU_ISA=AVX2).
        (cpu("avx2", "avx512f", "avx512_bf16", onednn="AVX2"), "float32"),
        (cpu("avx2", "avx512f", "avx512_bf16", onednn="AVX512_CORE_BF16"), "bfloat16"),
        (cpu("avx2", "avx512f", "amx_bf16", onednn="ALL"), "bfloat16"),
        (cpu(torch_capability="DEFAULT"), "float32"),  # no flags readable: float32 is safe
        # Arm: Neoverse V1/N2 (Graviton 3/4) have BF16; older cores do not.
        (cpu("asimd", "sve", "bf16", arch="aarch64", torch_capability="SVE256"), "bfloat16"),
        (cpu("asimd", arch="aarch64", torch_capability="DEFAULT"), "float32"),
        # An x86 flag set never counts on Arm, and the reverse.
        (cpu("bf16", torch_capability="AVX512"), "float32"),
    ],
)
def test_cpu_gets_bf16_only_where_it_is_native(machine: CpuInfo, expected: str) -> None:
    dtype, reason = HardwareProfile(machine).auto_dtype()
    assert dtype == expected, reason
    assert reason


def test_the_reason_says_why_a_bf16_cpu_runs_float32() -> None:
    forced = cpu("avx2", "avx512f", "avx512_bf16", torch_capability="AVX2")
    _, reason = HardwareProfile(forced).auto_dtype()
    assert "torch runs AVX2" in reason and "emulated" in reason


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((9, 0), "bfloat16"), ((8, 0), "bfloat16"), ((8, 6), "bfloat16"), ((7, 5), "float16")],
)
def test_gpu_uses_bf16_from_ampere_on_and_float16_before(
    capability: tuple[int, int], expected: str
) -> None:
    profile = HardwareProfile(ZEN3, (GpuInfo("test gpu", capability, 80.0),))
    assert profile.auto_dtype()[0] == expected
    assert profile.choose("embedder", "auto").device == "cuda"


def test_an_explicit_setting_wins_and_says_what_auto_would_pick() -> None:
    choice = HardwareProfile(ZEN3).choose("llm", "bfloat16")
    assert choice.dtype == "bfloat16"
    assert "auto would pick float32" in choice.reason


def test_float16_on_a_cpu_is_allowed_but_flagged() -> None:
    choice = HardwareProfile(ZEN3).choose("llm", "float16")
    assert choice.dtype == "float16" and "emulated" in choice.reason


def test_threads_default_to_the_cores_this_process_may_use() -> None:
    assert HardwareProfile(cpu("avx2", cores=6)).choose("embedder", "auto").threads == 6
    assert HardwareProfile(cpu("avx2", cores=6)).choose("vllm", "auto", threads=1).threads == 1


def test_every_component_follows_its_own_setting() -> None:
    settings = Settings(embedding_dtype="auto", llm_dtype="bfloat16", vllm_dtype="float32")
    choices = hardware_choices(settings, HardwareProfile(SAPPHIRE_RAPIDS))
    assert {name: c.dtype for name, c in choices.items()} == {
        "embedder": "bfloat16",
        "llm": "bfloat16",
        "vllm": "float32",
    }
    choices = hardware_choices(Settings(), HardwareProfile(ZEN3))
    assert {c.dtype for c in choices.values()} == {"float32"}


def test_an_unknown_dtype_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="llm_dtype"):
        Settings(llm_dtype="fp8")


def test_flags_are_read_from_x86_and_arm_cpuinfo() -> None:
    x86 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 fma\n\nprocessor\t: 1\n"
    assert read_cpu_flags(x86) == ("AMD EPYC", frozenset({"fpu", "avx2", "fma"}))
    arm = "processor\t: 0\nFeatures\t: fp asimd sve bf16\nCPU part\t: 0xd40\n"
    assert read_cpu_flags(arm)[1] == frozenset({"fp", "asimd", "sve", "bf16"})


def test_memory_follows_a_container_limit(tmp_path: Path) -> None:
    from app.hardware import _memory_gb

    unlimited = tmp_path / "max"
    unlimited.write_text("max\n")
    machine = _memory_gb(unlimited)
    limited = tmp_path / "limited"
    limited.write_text(f"{3 * 1024**3}\n")
    assert machine > 0 and _memory_gb(limited) == min(3.0, machine)
    profile = HardwareProfile(cpu("avx2"))
    assert profile.cpu_kv_cache_gb() == 2  # 24 GB: a tenth


def test_beside_a_managed_vllm_torch_keeps_to_its_threads() -> None:
    profile = HardwareProfile(cpu("avx2", cores=8))
    alone = hardware_choices(Settings(engine="transformers"), profile)
    assert alone["embedder"].threads == 8 and alone["vllm"].threads == 7
    beside = hardware_choices(
        Settings(engine="vllm", vllm_mode="managed", torch_threads_beside_vllm=1), profile
    )
    assert beside["embedder"].threads == 1 and beside["llm"].threads == 1
    external = hardware_choices(Settings(engine="vllm", vllm_mode="external"), profile)
    assert external["embedder"].threads == 8
    # The workers of `serve --workers` share the host's cores with each other.
    workers = hardware_choices(Settings(engine="vllm", vllm_mode="external", workers=2), profile)
    assert workers["embedder"].threads == 1
