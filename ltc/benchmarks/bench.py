"""`ltc bench`: deployment latency of ONNX models on ONNX Runtime (CPU, CUDA, TensorRT EP) and native
TensorRT, measured so that the numbers hold on a noisy machine.

Hygiene (DESIGN.md): one session alive at a time; warm-up; models interleaved round by round
(A B A B ...); statistics over all timed runs; comparisons as the ratio of per-round medians to the
first model, with a bootstrap confidence interval over rounds. A GPU provider that silently fell back
to the CPU is reported as a fallback, never as a GPU number.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ltc.errors import LtcError, first_line
from ltc.hardware import (
    BENCH_PROVIDERS as PROVIDERS,  # (trt: native TensorRT, not through ONNX Runtime)
)
from ltc.hardware import OPT_LEVELS, cpu_flags
from ltc.reporting.report import bench_markdown

SCHEMA_VERSION = 2  # 2: runs may carry per_layer (version 1 files still validate and render)


@dataclass
class BenchOptions:
    batches: tuple[int, ...] = (1,)
    providers: tuple[str, ...] = ("cpu",)
    threads: int = 0  # 0: ONNX Runtime's default
    warmup: int = 5
    iterations: int = 20  # timed runs per model per round
    rounds: int = 5
    time_budget: float = 0.0  # seconds per model per round; overrides iterations when > 0
    opt_level: str = "all"
    fp16: bool = False
    io_binding: bool = False
    profile: bool = False
    per_layer: bool = False  # per-layer latency of every model, charged to the first model's layers
    engine_cache: str = ".ltc-trt-cache"
    seed: int = 0


def percentile(xs: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q))


def latency_stats(seconds: list[float], batch: int) -> dict:
    """Like onnxruntime_perf_test and trtexec: min, mean, median, p90/p95/p99, max (ms), throughput."""
    ms = [s * 1e3 for s in seconds]
    med = statistics.median(ms)
    return {"n": len(ms), "min_ms": min(ms), "mean_ms": statistics.fmean(ms), "median_ms": med,
            "p90_ms": percentile(ms, 90), "p95_ms": percentile(ms, 95), "p99_ms": percentile(ms, 99),
            "max_ms": max(ms), "std_ms": statistics.pstdev(ms),
            "throughput_per_s": batch / (med / 1e3) if med > 0 else float("inf")}


def ratio_ci(base_rounds: list[float], other_rounds: list[float], seed: int = 0, samples: int = 2000,
             level: float = 0.95) -> dict:
    """Median over rounds of other/base per-round medians, with a percentile bootstrap CI over rounds
    (``scipy.stats.bootstrap``; rounds are resampled, the statistic is the median ratio)."""
    from scipy.stats import bootstrap

    ratios = np.asarray([o / b for b, o in zip(base_rounds, other_rounds, strict=True)], dtype=np.float64)
    ratio = float(np.median(ratios))
    if len(ratios) < 2 or np.ptp(ratios) == 0:  # nothing to resample: the interval is the point
        lo = hi = ratio
    else:
        ci = bootstrap((ratios,), np.median, n_resamples=samples, confidence_level=level, method="percentile",
                       rng=np.random.default_rng(seed), vectorized=True).confidence_interval
        lo, hi = float(ci.low), float(ci.high)
    return {"ratio": ratio, "ci_low": lo, "ci_high": hi, "level": level, "rounds": len(ratios)}


def interleave_order(names: list[str], rounds: int) -> list[tuple[int, str]]:
    """(round, model) in the order they run: every round runs every model, A B C A B C ..."""
    return [(r, n) for r in range(rounds) for n in names]


# ----------------------------------------------------------------------------------------- runners
class ProviderUnavailable(Exception):
    """The provider cannot run here; the message is the reason reported instead of a number."""


class OrtRunner:
    """One ONNX Runtime session for one model, provider and batch; checks it got the provider asked."""

    def __init__(self, path: str, provider: str, batch: int, opts: BenchOptions, profile_dir: str | None = None,
                 write_graph: bool = False):
        """``profile_dir``: turn ONNX Runtime's profiler on, its trace written there, and with
        ``write_graph`` the optimised graph ONNX Runtime runs."""
        import onnxruntime as ort

        wanted = PROVIDERS[provider]
        available = ort.get_available_providers()
        if wanted not in available:
            raise ProviderUnavailable(f"{wanted} is not available in this onnxruntime build "
                                      f"(available: {', '.join(available)}); install onnxruntime-gpu")
        so = ort.SessionOptions()
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[opts.opt_level]
        if opts.threads:
            so.intra_op_num_threads = opts.threads
        so.log_severity_level = 4
        if profile_dir is not None:
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(profile_dir, "ltc-profile")
            if write_graph and provider != "tensorrt":  # (a graph with TensorRT-compiled nodes cannot be written)
                so.optimized_model_filepath = os.path.join(profile_dir, OPTIMIZED_MODEL)
                so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                            OPTIMIZED_MODEL + ".data")
        self.provider_options = provider_options(provider, opts)
        providers = [(wanted, self.provider_options)] + ([("CPUExecutionProvider", {})] if provider != "cpu" else [])
        t0 = time.perf_counter()
        import warnings

        with warnings.catch_warnings():  # ORT warns, then falls back; the fallback is checked below
            warnings.simplefilter("ignore")
            try:
                self.sess = ort.InferenceSession(path, so, providers=providers)
            except Exception as exc:  # noqa: BLE001 - ORT raises its own types; the model is the input
                raise LtcError(f"{path}: ONNX Runtime cannot load the model ({first_line(exc)})") from None
        self.session_seconds = time.perf_counter() - t0
        got = self.sess.get_providers()
        self.fallback = got[0] != wanted
        self.providers = got
        if self.fallback:
            raise ProviderUnavailable(f"asked for {wanted} but the session got {got[0]} (onnxruntime-gpu without "
                                      "CUDA/cuDNN libraries falls back silently); no GPU number reported")
        self.feeds = make_feeds([(i.name, i.shape, i.type) for i in self.sess.get_inputs()], batch, opts.seed)
        self.binding = None
        if opts.io_binding and provider != "cpu":
            self.binding = self.sess.io_binding()
            for name, arr in self.feeds.items():
                self.binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr, "cuda", 0))
            for o in self.sess.get_outputs():
                self.binding.bind_output(o.name, "cuda", 0)

    def run(self) -> None:
        if self.binding is not None:
            self.binding.synchronize_inputs()
            self.sess.run_with_iobinding(self.binding)
            self.binding.synchronize_outputs()
        else:
            self.sess.run(None, self.feeds)

    def close(self) -> None:
        del self.sess


OPTIMIZED_MODEL = "optimized.onnx"


def provider_options(provider: str, opts: BenchOptions) -> dict:
    if provider == "tensorrt":
        cache = str(Path(opts.engine_cache).resolve())
        return {"trt_fp16_enable": opts.fp16, "trt_engine_cache_enable": True, "trt_engine_cache_path": cache}
    if provider == "cuda":
        return {"cudnn_conv_algo_search": "EXHAUSTIVE"}
    return {}


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
              "tensor(bool)": "bool"}


def make_feeds(inputs: list[tuple[str, list, str]], batch: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded feeds for ONNX Runtime's (name, shape, type) inputs (see ``verify.random_feeds``)."""
    from ltc.passes.verify import random_feeds

    specs = []
    for name, shape, typ in inputs:
        if typ not in _ORT_TYPES:
            raise LtcError(f"input '{name}' has type {typ}, which ltc bench cannot generate")
        specs.append((name, [d if isinstance(d, int) else None for d in shape], np.dtype(_ORT_TYPES[typ])))
    return random_feeds(specs, batch, seed, way_out="ltc bench varies only the first (batch) dimension: fix the "
                        "others in the model (e.g. onnxruntime.tools.make_dynamic_shape_fixed)")


class TrtRunner:
    """Native TensorRT: build (or load the cached) engine from the ONNX file and time execute_async_v3.

    Device memory comes from torch (CUDA build) so that no extra CUDA binding is needed.
    """

    def __init__(self, path: str, provider: str, batch: int, opts: BenchOptions):
        try:
            import tensorrt as trt
        except ImportError:
            raise ProviderUnavailable("the tensorrt Python package is not installed (its wheels come from "
                                      "NVIDIA's index: pip install tensorrt)") from None
        try:
            import torch
        except ImportError:
            raise ProviderUnavailable("native TensorRT timing allocates device memory with torch; install a "
                                      "CUDA build of torch") from None
        if not torch.cuda.is_available():
            raise ProviderUnavailable("no CUDA device visible (torch.cuda.is_available() is False)")
        self.trt, self.torch = trt, torch
        logger = trt.Logger(trt.Logger.WARNING)
        t0 = time.perf_counter()
        engine_bytes = self._engine(path, batch, opts, trt, logger)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(engine_bytes)
        self.context = self.engine.create_execution_context()
        self.session_seconds = time.perf_counter() - t0
        self.providers = [f"TensorRT {trt.__version__}"]
        self.fallback = False
        self.stream = torch.cuda.Stream()
        self.buffers = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                shape = [batch if d == -1 else d for d in self.engine.get_tensor_shape(name)]
                self.context.set_input_shape(name, shape)
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
                     trt.int64: torch.int64}[self.engine.get_tensor_dtype(name)]
            buf = torch.randn(shape, device="cuda").to(dtype) if dtype.is_floating_point else \
                torch.zeros(shape, device="cuda", dtype=dtype)
            self.buffers[name] = buf
            self.context.set_tensor_address(name, buf.data_ptr())
        self.io_binding = not opts.io_binding  # host copies are timed only when io_binding is False
        self.host = {n: b.cpu() for n, b in self.buffers.items()}

    @staticmethod
    def _engine(path: str, batch: int, opts: BenchOptions, trt, logger) -> bytes:
        data = Path(path).read_bytes()
        key = hashlib.sha256(data + f"{batch}-{opts.fp16}-{trt.__version__}".encode()).hexdigest()[:16]
        cache = Path(opts.engine_cache) / f"{Path(path).stem}-{key}.engine"
        if cache.exists():
            return cache.read_bytes()
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise LtcError(f"TensorRT cannot parse {path}: {errors}")
        config = builder.create_builder_config()
        if opts.fp16 and hasattr(trt.BuilderFlag, "FP16"):
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            t = network.get_input(i)
            shape = [batch if d == -1 else d for d in t.shape]
            profile.set_shape(t.name, shape, shape, shape)
        config.add_optimization_profile(profile)
        engine = builder.build_serialized_network(network, config)
        if engine is None:
            raise LtcError(f"TensorRT failed to build an engine for {path}")
        from ltc.fileio import write_bytes_atomic

        cache.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(cache, bytes(engine))
        return bytes(engine)

    def run(self) -> None:
        torch = self.torch
        if not self.io_binding:
            for name, host in self.host.items():
                self.buffers[name].copy_(host, non_blocking=False)
        self.context.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()
        if not self.io_binding:
            for name in self.buffers:
                self.host[name] = self.buffers[name].cpu()
        torch.cuda.synchronize()

    def close(self) -> None:
        del self.context, self.engine, self.buffers


def _runner(path: str, provider: str, batch: int, opts: BenchOptions):
    return (TrtRunner if provider == "trt" else OrtRunner)(path, provider, batch, opts)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _time_runs(runner, opts: BenchOptions, path: str, batch: int) -> list[float]:
    try:
        runner.run()  # the first run also checks that the model runs at all
    except Exception as exc:  # noqa: BLE001 - ORT/TensorRT raise their own types; the model is the input
        raise LtcError(f"{path}: the model fails on random inputs of batch {batch} ({first_line(exc)}); check "
                       "that it runs in ONNX Runtime with that batch size") from None
    for _ in range(opts.warmup):
        runner.run()
    times = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        runner.run()
        times.append(time.perf_counter() - t0)
        if opts.time_budget > 0:
            if time.perf_counter() - start >= opts.time_budget and len(times) >= 3:
                break
        elif len(times) >= opts.iterations:
            break
    return times


def profile_session(path: str, provider: str, batch: int, opts: BenchOptions, write_graph: bool = False):
    """One session like the timed ones with ONNX Runtime's profiler on: warm-up, then the timed runs
    (``iterations`` or ``time_budget``); their kernels, and with ``write_graph`` the graph ONNX Runtime
    ran (for the names of the nodes it made; the same in every session of a model)."""
    import tempfile

    from ltc.benchmarks.per_layer import OptimizedGraph, read_profile

    with tempfile.TemporaryDirectory() as tmp:
        runner = OrtRunner(path, provider, batch, opts, profile_dir=tmp, write_graph=write_graph)
        try:
            timed = len(_time_runs(runner, opts, path, batch))
            trace = runner.sess.end_profiling()
        finally:
            runner.close()
        optimized = Path(tmp) / OPTIMIZED_MODEL
        return read_profile(trace, timed, OptimizedGraph.load(optimized) if optimized.exists() else None)


def _profile_entries(names: list[str], opts: BenchOptions, profiles: dict[str, list], structures: dict,
                     maps: dict) -> dict:
    """The ``profile`` (top operators) and ``per_layer`` entries of a run from its profiled sessions."""
    from ltc.benchmarks.per_layer import Attribution, op_totals, per_layer_report

    out = {}
    if opts.profile:
        out["profile"] = {n: op_totals([run for p in profiles[n] for run in p.kernels]) for n in names}
    if opts.per_layer:
        attributions = {n: Attribution() for n in names}
        for n in names:
            for p in profiles[n]:  # the first session of each model wrote ORT's graph
                attributions[n].add(p, structures[n], maps.get(n), profiles[n][0].optimized)
        out["per_layer"] = per_layer_report(names, structures, maps, attributions)
    return out


def bench_files(paths: list[str], opts: BenchOptions, *, json_out: str | None = None, md_out: str | None = None,
                progress=None) -> dict:
    """:func:`bench`, then the JSON and Markdown reports; the outputs are checked against every file
    read (models and their external data) before the benchmark starts."""
    from ltc.fileio import check_input_file, check_outputs, write_text_atomic
    from ltc.onnx_io import model_files

    for p in paths:
        check_input_file(p, "model file", "pass .onnx models")
    check_outputs([json_out, md_out], [f for p in paths for f in model_files(p)])
    report = bench(paths, opts, progress)
    if json_out:
        write_text_atomic(json_out, json.dumps(report, indent=2))
    if md_out:
        write_text_atomic(md_out, bench_markdown(report))
    return report


def bench(paths: list[str], opts: BenchOptions, progress=None) -> dict:
    """Benchmark ``paths`` on every provider and batch; returns the report (:data:`SCHEMA_VERSION`).
    ``opts.per_layer``: also the per-layer latency of every model, charged to the first model's layers
    (see :mod:`ltc.benchmarks.per_layer`)."""
    import tempfile

    from ltc.benchmarks.per_layer import check_mapped, match_layers, model_layers, name_nodes
    from ltc.onnx_io import read_model, save_model
    from ltc.passes.stats import model_stats

    if not paths:
        raise LtcError("no model given; pass one or more .onnx files")
    if opts.opt_level not in OPT_LEVELS:
        raise LtcError(f"--opt-level must be one of {', '.join(OPT_LEVELS)}")
    unknown = [p for p in opts.providers if p not in PROVIDERS]
    if unknown:
        raise LtcError(f"unknown provider(s) {unknown}; choose from {', '.join(PROVIDERS)}")
    for key, value, low in (("batch", min(opts.batches, default=1), 1), ("rounds", opts.rounds, 1),
                            ("iterations", opts.iterations, 1), ("warmup", opts.warmup, 0), ("threads", opts.threads, 0)):
        if not isinstance(value, int) or value < low:
            raise LtcError(f"--{key} must be an integer >= {low}, got {value!r}")
    if not (math.isfinite(opts.time_budget) and opts.time_budget >= 0):
        raise LtcError(f"--time-budget must be a finite number of seconds >= 0, got {opts.time_budget!r}")
    if opts.rounds < 2 and len(paths) > 1:
        raise LtcError("--rounds must be >= 2 to compare models (the confidence interval is over rounds)")
    if opts.per_layer and all(p == "trt" for p in opts.providers):
        raise LtcError("--per-layer needs ONNX Runtime's profiler, which native TensorRT (--provider trt) does not "
                       "have; add --provider cpu, cuda or tensorrt")
    names = _names(paths)
    models = {}
    structures, profile_paths = {}, {}
    with tempfile.TemporaryDirectory(prefix="ltc-bench-") as tmp:
        for name, path in zip(names, paths, strict=True):
            m, source = read_model(path)
            s = model_stats(m)
            models[name] = {"path": str(path), "file_bytes": source.bytes, "parameters": s["parameters"],
                            "macs_per_sample": s["macs"]}
            profile_paths[name] = str(path)
            if opts.per_layer:
                renamed = name_nodes(m)
                if renamed:  # ORT profiles an unnamed node as <op>_<index>: profile a named copy
                    profile_paths[name] = str(Path(tmp) / f"model{len(structures)}.onnx")
                    save_model(m, profile_paths[name])
                structures[name] = model_layers(m, None if renamed else s["layer_macs"])
            del m
        maps = {n: match_layers(structures[names[0]], structures[n]) for n in names[1:]} if opts.per_layer else {}
        check_mapped({n: models[n]["path"] for n in names}, names[0], maps)
        runs, skipped = _measure(names, models, opts, progress, profile_paths, structures, maps)
    return {"ltc_report": "bench", "schema_version": SCHEMA_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "environment": environment(opts), "options": _options_dict(opts), "models": models, "runs": runs,
            "skipped": skipped}


def _measure(names: list[str], models: dict, opts: BenchOptions, progress, profile_paths: dict[str, str],
             structures: dict, maps: dict) -> tuple[list[dict], list[dict]]:
    """The timed rounds of every provider and batch (and the profiled ones): the runs and the skips."""
    runs = []
    skipped = []
    for provider in opts.providers:
        for batch in opts.batches:
            per_round: dict[str, list[list[float]]] = {n: [] for n in names}
            session_s: dict[str, list[float]] = {n: [] for n in names}
            rss: dict[str, int] = {n: 0 for n in names}
            profiles: dict[str, list] = {n: [] for n in names}
            reason = None
            for r, name in interleave_order(names, opts.rounds):
                before = _rss_bytes()
                try:
                    runner = _runner(models[name]["path"], provider, batch, opts)
                except ProviderUnavailable as exc:
                    reason = str(exc)
                    break
                session_s[name].append(runner.session_seconds)
                try:
                    per_round[name].append(_time_runs(runner, opts, models[name]["path"], batch))
                    rss[name] = max(rss[name], _rss_bytes() - before)  # while the session is alive
                finally:
                    runner.close()
                actual = runner.providers
                del runner
                gc.collect()
                if provider != "trt" and (opts.per_layer or (opts.profile and r == 0)):
                    # right after the timed session, so that both see the same machine (A A' B B' A A' ...)
                    profiles[name].append(profile_session(profile_paths[name], provider, batch, opts,
                                                          write_graph=opts.per_layer and not profiles[name]))
                    gc.collect()
                if progress:
                    progress()
            if reason:
                skipped.append({"provider": provider, "batch": batch, "reason": reason})
                continue
            run = {"provider": provider, "provider_name": PROVIDERS[provider] or "TensorRT",
                   "providers_used": actual, "batch": batch, "io_binding": opts.io_binding and provider != "cpu",
                   "copies_timed": not (opts.io_binding and provider != "cpu"),
                   "provider_options": provider_options(provider, opts), "models": {}}
            base = names[0]
            for name in names:
                flat = [t for rnd in per_round[name] for t in rnd]
                entry = {"latency": latency_stats(flat, batch),
                         "round_medians_ms": [statistics.median(r) * 1e3 for r in per_round[name]],
                         "session_create_s": statistics.median(session_s[name]),
                         "rss_increase_bytes": rss[name]}
                if name != base:
                    entry["vs_first"] = ratio_ci(
                        [statistics.median(r) for r in per_round[base]],
                        [statistics.median(r) for r in per_round[name]], seed=opts.seed)
                    entry["vs_first"]["speedup"] = 1 / entry["vs_first"]["ratio"]
                run["models"][name] = entry
            if provider != "trt":
                run.update(_profile_entries(names, opts, profiles, structures, maps))
            runs.append(run)
    return runs, skipped


def _names(paths: list[str]) -> list[str]:
    names = []
    for p in paths:
        base = Path(p).stem
        name, i = base, 2
        while name in names:
            name, i = f"{base}#{i}", i + 1
        names.append(name)
    return names


def _options_dict(opts: BenchOptions) -> dict:
    from dataclasses import asdict

    d = asdict(opts)
    d["batches"], d["providers"] = list(opts.batches), list(opts.providers)
    return d


def environment(opts: BenchOptions | None = None) -> dict:
    """CPU model and flags, cores, GPU and driver, CUDA, ONNX Runtime and TensorRT versions."""
    import onnxruntime as ort

    env = {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu_model(),
           "cpu_flags": sorted(cpu_flags() & {"avx", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                                               "avx512_bf16", "amx_tile", "fma", "f16c", "sse4_2", "neon", "asimd"}),
           "logical_cores": os.cpu_count(), "onnxruntime": ort.__version__,
           "onnxruntime_providers": ort.get_available_providers(), "gpu": _gpu(), "tensorrt": None}
    try:
        import tensorrt

        env["tensorrt"] = tensorrt.__version__
    except ImportError:
        pass
    return env


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _gpu() -> dict | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not out:
        return None
    name, driver, mem = (s.strip() for s in out.splitlines()[0].split(","))
    cuda = None
    try:
        head = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=10).stdout
        if "CUDA Version:" in head:
            cuda = head.split("CUDA Version:")[1].split()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return {"name": name, "driver": driver, "memory": mem, "cuda": cuda}
