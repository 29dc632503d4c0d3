"""What this machine offers, read once at start, and the dtype and threads each component uses.

bfloat16 halves memory traffic, but only hardware with bf16 instructions computes in it: on a
CPU without them (AVX2 only: AMD Zen 1-3, many cloud VMs and laptops) torch emulates bf16, and a
MiniLM encode or a prompt prefill runs 5-30x slower than float32. So every dtype setting
defaults to ``auto``, which asks this module: bf16 where the CPU (AVX512-BF16, AMX, Arm BF16) or
the GPU (compute capability 8.0+) runs it natively, float16 on older GPUs, float32 otherwise.
An explicit setting always wins.

``ATEN_CPU_CAPABILITY=avx2`` (and ``ONEDNN_MAX_CPU_ISA=AVX2``) make a bf16 machine take the
AVX2 code path; the profile reads what torch and oneDNN will actually use, not only the CPU's
flags, so ``auto`` follows them.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

Dtype = Literal["float32", "bfloat16", "float16"]
DtypeSetting = Literal["auto", "float32", "bfloat16", "float16"]
Component = Literal["embedder", "llm", "vllm"]

# CPU flags (as /proc/cpuinfo names them) that mean bf16 arithmetic in hardware.
X86_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
ARM_BF16_FLAGS = frozenset({"bf16"})
# torch's CPU capability (torch.backends.cpu.get_cpu_capability()) at which its kernels can use
# the CPU's bf16 instructions; ATEN_CPU_CAPABILITY=avx2 pins it to "AVX2".
TORCH_BF16_CAPABILITIES = frozenset({"AVX512", "AVX512_BF16", "AMX", "SVE", "SVE256"})
# ONEDNN_MAX_CPU_ISA values that still admit bf16 kernels (oneDNN's ISA names).
ONEDNN_BF16_MARKERS = ("BF16", "AMX", "FP16", "AVX10", "ALL", "DEFAULT")
# The first GPU generation with bf16 tensor cores (Ampere).
GPU_BF16_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class CpuInfo:
    model: str
    arch: str
    cores: int  # the cores this process may run on (affinity), not the host's count
    flags: frozenset[str]
    torch_capability: str  # what torch's kernels dispatch to: "AVX512", "AVX2", "DEFAULT"...
    onednn_max_isa: str  # ONEDNN_MAX_CPU_ISA, "" when unset
    memory_gb: float

    @property
    def has_bf16_flags(self) -> bool:
        wanted = ARM_BF16_FLAGS if self.arch in ("aarch64", "arm64") else X86_BF16_FLAGS
        return bool(wanted & self.flags)

    @property
    def native_bf16(self) -> bool:
        """The CPU has bf16 instructions *and* torch and oneDNN are allowed to use them."""
        onednn_allows = not self.onednn_max_isa or any(
            marker in self.onednn_max_isa.upper() for marker in ONEDNN_BF16_MARKERS
        )
        return (
            self.has_bf16_flags
            and self.torch_capability.upper() in TORCH_BF16_CAPABILITIES
            and onednn_allows
        )

    @property
    def vector_isa(self) -> str:
        """The widest vector instructions the CPU offers, for people reading the profile."""
        for flag in ("amx_bf16", "avx512_bf16", "avx512f", "avx2", "sve", "asimd"):
            if flag in self.flags:
                return flag
        return "none"


@dataclass(frozen=True)
class GpuInfo:
    name: str
    capability: tuple[int, int]
    memory_gb: float

    @property
    def native_bf16(self) -> bool:
        return self.capability >= GPU_BF16_CAPABILITY


@dataclass(frozen=True)
class Choice:
    """One component's settings: where it runs, in which dtype, on how many threads, and why."""

    device: str  # "cpu" or "cuda"
    dtype: Dtype
    threads: int  # torch threads for in-process work; vLLM's OpenMP threads for the server
    reason: str


@dataclass(frozen=True)
class HardwareProfile:
    cpu: CpuInfo
    gpus: tuple[GpuInfo, ...] = field(default_factory=tuple)

    @property
    def device(self) -> str:
        return "cuda" if self.gpus else "cpu"

    def auto_dtype(self) -> tuple[Dtype, str]:
        """The fastest dtype this machine computes natively, and the reason in words."""
        if self.gpus:
            gpu = self.gpus[0]
            major, minor = gpu.capability
            if gpu.native_bf16:
                return "bfloat16", f"GPU {gpu.name} (compute {major}.{minor}) has bf16"
            return "float16", f"GPU {gpu.name} (compute {major}.{minor}) has no bf16: float16"
        cpu = self.cpu
        if cpu.native_bf16:
            isa = f"{cpu.vector_isa}, torch {cpu.torch_capability}"
            return "bfloat16", f"CPU has native bf16 ({isa})"
        if cpu.has_bf16_flags:
            return "float32", (
                f"CPU has bf16 but torch runs {cpu.torch_capability}"
                + (f" (ONEDNN_MAX_CPU_ISA={cpu.onednn_max_isa})" if cpu.onednn_max_isa else "")
                + ": bf16 would be emulated"
            )
        return "float32", f"CPU has no bf16 instructions ({cpu.vector_isa}): bf16 would be emulated"

    def choose(self, component: Component, setting: DtypeSetting, threads: int = 0) -> Choice:
        """``setting`` is the component's dtype setting; ``threads`` 0 means every core the
        component may use (vLLM on a CPU keeps one for its scheduler and binds the rest)."""
        dtype, reason = self.auto_dtype()
        if setting != "auto":
            dtype, reason = setting, f"set explicitly (auto would pick {dtype})"
        if self.device == "cpu" and dtype == "float16":
            reason += "; float16 on a CPU is emulated and slow"
        cores = self.cpu.cores
        if component == "vllm" and self.device == "cpu":
            cores = max(1, cores - 1)
        return Choice(self.device, dtype, threads or cores, reason)

    def cpu_kv_cache_gb(self) -> int:
        """vLLM's CPU KV cache when not set: a tenth of the memory, 1-8 GB (2 GB holds ~45k
        float32 tokens of a 135M model; vLLM's own default asks for most of a NUMA node)."""
        return int(min(8, max(1, self.cpu.memory_gb // 10)))

    def to_dict(self) -> dict[str, object]:
        cpu = asdict(self.cpu)
        cpu["flags"] = sorted(self.cpu.flags & _SHOWN_FLAGS)
        cpu["native_bf16"] = self.cpu.native_bf16
        return {"cpu": cpu, "gpus": [asdict(gpu) for gpu in self.gpus]}


# The flags worth showing in a profile (the full list is ~100 names).
_SHOWN_FLAGS = frozenset(
    {"avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "fma", "bf16", "sve"}
    | {"asimd", "f16c"}
)


def read_cpu_flags(cpuinfo: str) -> tuple[str, frozenset[str]]:
    """The model name and the feature flags from /proc/cpuinfo's text (x86 or Arm)."""
    model, flags = "", frozenset[str]()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
    return model, flags


def _memory_gb(cgroup_limit: Path = Path("/sys/fs/cgroup/memory.max")) -> float:
    """The memory this process may use: the machine's, or its container's limit if lower."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 0
    try:
        limit = cgroup_limit.read_text().strip()
        if limit.isdigit():
            total = min(total, int(limit)) if total else int(limit)
    except OSError:
        pass
    return total / 1024**3


def detect_cpu(cpuinfo_path: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    import torch

    try:
        model, flags = read_cpu_flags(cpuinfo_path.read_text())
    except OSError:  # not Linux: no flags, so no bf16 is assumed (float32 is always correct)
        model, flags = platform.processor(), frozenset()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return CpuInfo(
        model=model or platform.processor() or "unknown",
        arch=platform.machine(),
        cores=cores,
        flags=flags,
        torch_capability=str(torch.backends.cpu.get_cpu_capability()),
        onednn_max_isa=os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
        memory_gb=round(_memory_gb(), 1),
    )


def detect_gpus() -> tuple[GpuInfo, ...]:
    import torch

    if not torch.cuda.is_available():
        return ()
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append(
            GpuInfo(props.name, (props.major, props.minor), round(props.total_memory / 1024**3, 1))
        )
    return tuple(gpus)


@lru_cache(maxsize=1)
def detect() -> HardwareProfile:
    """The machine's profile, read once per process."""
    return HardwareProfile(detect_cpu(), detect_gpus())


def describe(choices: dict[Component, Choice], profile: HardwareProfile) -> dict[str, Any]:
    """The profile and what each component runs with: the fields of the start-up log event."""
    return {
        "profile": profile.to_dict(),
        "choices": {name: asdict(choice) for name, choice in choices.items()},
    }
