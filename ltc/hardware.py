"""Channel-count alignment that each execution provider runs fast (the default for --round-to)."""

from __future__ import annotations

from pathlib import Path

PROVIDERS = ("cpu", "cuda", "tensorrt")  # deployment targets (ONNX Runtime execution providers)
# What ltc bench times: each ONNX Runtime provider by its ORT name, and native TensorRT (its Python API).
BENCH_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": None,
}
OPT_LEVELS = ("disable", "basic", "extended", "all")  # ONNX Runtime graph optimisation levels
UNEQUAL_GROUPS = ("auto", "always", "never")  # how removal may treat grouped Convs (ltc compress --unequal-groups)


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def default_round_to(provider: str = "cpu") -> int:
    """CPU: 16 with AVX-512 (ORT's NCHWc block), 8 with AVX2, else 4. GPUs: 8 (tensor-core tiles)."""
    if provider == "cpu":
        flags = cpu_flags()
        if "avx512f" in flags:
            return 16
        if "avx2" in flags:
            return 8
        return 4
    return 8
