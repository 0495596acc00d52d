"""``opregistry tune``: on this machine, time every candidate kernel a backend
offers for an op, next to PyTorch's own op, per M, and write the deployment
config that hands each range of M to the fastest.

A backend offers candidates through the ``opregistry_tune_candidates`` hook:
routing rules (``kernel`` and its tiles) that can each serve the op alone. The
tuner enables the backend once per candidate with that rule as the op's only
one and times the op as a model calls it, in alternating rounds with PyTorch's
op (nothing enabled), so that every ratio comes from interleaved samples. For
each measured M the winner is the candidate whose worst ratio to PyTorch over
the shapes is best. Measured M values split M into ranges: the rule measured at
M serves every M above the previous measured one (the largest serves all M
above it); neighbouring ranges with one winner become one rule. An op whose
every range is faster with PyTorch's op, nothing enabled, than with any
candidate is written ``enabled: false``.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import shlex
import statistics
import sys
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
import yaml

from opregistry import registry
from opregistry.registry.errors import RegistryError, render

from .workloads import Progress, environment, make_qlinear, quiet_quantization, time_call

LINEAR_DYNAMIC = "quantized::linear_dynamic"
LINEAR_RELU_DYNAMIC = "quantized::linear_relu_dynamic"
INT_MM = "aten::_int_mm"
PYTORCH = "<pytorch>"     # key of PyTorch's own op, nothing enabled (a candidate may be labelled "pytorch")


class TuneError(RegistryError):
    """The tuner cannot run as asked; the message says why and what to do."""


# ---------------------------------------------------------------------------
# Workloads: each op called the way a model calls it
# ---------------------------------------------------------------------------

def _linear_workload(relu: bool):
    def make(k: int, n: int, ms: list[int], seed: int) -> dict[int, Callable[[], object]]:
        with quiet_quantization():
            _, qlin = make_qlinear(k, n, seed)
        gen = torch.Generator().manual_seed(seed + 1)
        xs = {m: torch.randn(m, k, generator=gen) for m in ms}
        if not relu:      # the module: nn.quantized.dynamic.Linear, as quantize_dynamic leaves it
            return {m: (lambda x=xs[m]: qlin(x)) for m in ms}
        packed = qlin._packed_params._packed_params
        op = torch.ops.quantized.linear_relu_dynamic
        return {m: (lambda x=xs[m]: op(x, packed, True)) for m in ms}
    return make


def _int_mm_workload(k: int, n: int, ms: list[int], seed: int) -> dict[int, Callable[[], object]]:
    # torchao's int8 recipe: int8 activations [M, K] times the int8 weight [N, K] transposed (a view).
    gen = torch.Generator().manual_seed(seed)
    w_t = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen).t()
    xs = {m: torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen) for m in ms}
    return {m: (lambda a=xs[m]: torch._int_mm(a, w_t)) for m in ms}


WORKLOADS = {LINEAR_DYNAMIC: _linear_workload(False), LINEAR_RELU_DYNAMIC: _linear_workload(True),
             INT_MM: _int_mm_workload}


# ---------------------------------------------------------------------------
# Tuning
# ---------------------------------------------------------------------------

def describe_rule(rule: dict) -> str:
    """``gemv_prequant 4x128x32 pad`` (a rule's kernel and tiles, short)."""
    tiles = [rule.get(t) for t in ("block_m", "block_n", "block_k")]
    text = str(rule.get("kernel"))
    if all(t is not None for t in tiles):
        text += " " + "x".join(map(str, tiles))
    extra = [f"{key}={value}" for key, value in rule.items()
             if key not in ("kernel", "block_m", "block_n", "block_k", "pad_m")]
    return " ".join([text, *(["pad"] if rule.get("pad_m") else []), *extra])


@dataclass
class OpResult:
    op: str
    candidates: list[dict]
    times: dict = field(default_factory=dict)        # (label, (k, n), m) -> median seconds
    failures: dict = field(default_factory=dict)     # label -> error text
    notes: dict = field(default_factory=dict)        # label -> warnings seen while it ran
    winners: dict = field(default_factory=dict)      # m -> label (a candidate's)
    executions: set = field(default_factory=set)     # how the backend ran (registry.status())

    def labels(self) -> list[str]:
        return [describe_rule(c) for c in self.candidates]

    def score(self, label: str, shapes, m: int) -> float:
        """The worst, over ``shapes``, of PyTorch's time / the candidate's (> 1: faster)."""
        return min(self.times[(PYTORCH, s, m)] / self.times[(label, s, m)] for s in shapes)


@dataclass
class TuneSettings:
    backend: str
    shapes: list[tuple[int, int]]
    ms: list[int]
    ops: list[str] | None = None
    config: str | None = None         # deployment file tuned over (default: $OPREGISTRY_CONFIG)
    execution: str | None = None
    device: str | None = None
    rounds: int = 3
    min_time: float = 0.2
    seed: int = 0


def _overrides(s: TuneSettings) -> dict:
    return {key: value for key, value in (("execution", s.execution), ("device", s.device)) if value}


def candidates_for(s: TuneSettings, base) -> dict[str, list[dict]]:
    """op -> candidate rules from the backend's hook (ops it offers none for are left out)."""
    reg = registry.default_registry()
    provided = reg.plugins.get(s.backend).info.ops
    wanted = s.ops or [op for op in provided if op in WORKLOADS]
    out = {}
    for op in wanted:
        if op not in provided:
            raise TuneError(f"backend {s.backend!r} does not provide {op}; it provides: {', '.join(provided)}")
        if op not in WORKLOADS:
            raise TuneError(f"no workload to tune {op} with; the tuner knows: {', '.join(WORKLOADS)}")
        found = reg.plugins.call(s.backend, "opregistry_tune_candidates", op=op, config=base)
        if found is None:
            if s.ops:
                raise TuneError(f"backend {s.backend!r} offers no candidates for {op} "
                                "(its plugin implements no opregistry_tune_candidates for it)")
            continue
        if not isinstance(found, (list, tuple)) or not all(isinstance(c, dict) and "kernel" in c for c in found):
            raise TuneError(f"backend {s.backend!r}: opregistry_tune_candidates for {op} must return a list of "
                            f"routing rules (mappings with 'kernel'), got {found!r}")
        if any(key in c for c in found for key in ("name", "when")):
            raise TuneError(f"backend {s.backend!r}: candidates for {op} must not set 'name' or 'when'")
        out[op] = [dict(c) for c in found]
    if not out:
        raise TuneError(f"backend {s.backend!r} offers no candidates to tune (hook opregistry_tune_candidates)")
    return out


def tune(s: TuneSettings, log=None) -> tuple[object, dict[str, OpResult]]:
    """Time every candidate of every op; return (the base config, results by op)."""
    log = log or sys.stderr
    reg = registry.default_registry()
    base = reg.build_config(s.backend, s.config, **_overrides(s))
    cands = candidates_for(s, base)
    results = {op: OpResult(op, c) for op, c in cands.items()}
    total = sum(len(c) + 1 for c in cands.values()) * len(s.shapes) * len(s.ms) * s.rounds
    bar = Progress("tune", total, stream=log)
    try:
        for op, res in results.items():
            for k, n in s.shapes:
                calls = WORKLOADS[op](k, n, s.ms, s.seed)
                samples: dict[tuple, list[float]] = {}
                for _ in range(s.rounds):
                    for label, rule in [(PYTORCH, None), *zip(res.labels(), res.candidates)]:
                        if label in res.failures:
                            bar.step(len(s.ms))
                            continue
                        try:
                            _time_one(s, op, rule, calls, samples, label, res, bar)
                        except Exception as exc:  # noqa: BLE001 - a candidate that fails is reported, not chosen
                            if rule is None:
                                raise TuneError(f"PyTorch's own {op} failed on {k}x{n}: {exc}") from exc
                            res.failures[label] = f"{type(exc).__name__}: {render(str(exc), 'cli')}"
                for (label, m), values in samples.items():
                    if label not in res.failures:
                        res.times[(label, (k, n), m)] = statistics.median(values)
            choose(res, s.shapes, s.ms)
    finally:
        bar.close()
    return base, results


def choose(res: OpResult, shapes, ms) -> None:
    """Fill ``res.winners``: per M, the candidate whose worst ratio to PyTorch over ``shapes`` is best."""
    ok = [lab for lab in res.labels() if lab not in res.failures]
    if not ok:
        raise TuneError(f"every candidate for {res.op} failed: "
                        + "; ".join(f"{lab}: {err}" for lab, err in res.failures.items()))
    for m in ms:
        res.winners[m] = max(ok, key=lambda lab: res.score(lab, shapes, m))


def _time_one(s, op, rule, calls, samples, label, res, bar) -> None:
    if rule is None:
        scope = contextlib.nullcontext()
    else:
        scope = registry.enabled(backend=s.backend, config=s.config, **_overrides(s),
                                 ops={op: {"routing": [{"name": "candidate", **rule}]}})
    with warnings.catch_warnings(record=True) as seen, torch.no_grad():
        warnings.simplefilter("always")
        with scope:
            if rule is not None:
                res.executions.add(registry.status()["backends"].get(s.backend, {}).get("execution", "?"))
            for m in s.ms:
                seconds = time_call(calls[m], s.min_time)
                samples.setdefault((label, m), []).append(seconds)
                bar.step()
    notes = {str(w.message) for w in seen if not issubclass(w.category, (DeprecationWarning, FutureWarning))
             and "deprecated" not in str(w.message)}
    if rule is not None and notes:
        res.notes.setdefault(label, set()).update(notes)


# ---------------------------------------------------------------------------
# The tuned config file
# ---------------------------------------------------------------------------

def _ranges(ms: list[int], winners: dict[int, str]) -> list[tuple[int, int | None, list[int], str]]:
    """(lowest M, highest M or None, measured Ms, winner) per rule: neighbours with one winner merged."""
    out: list[list] = []
    prev = 0
    for i, m in enumerate(ms):
        hi = None if i == len(ms) - 1 else m
        if out and out[-1][3] == winners[m]:
            out[-1][1], out[-1][2] = hi, out[-1][2] + [m]
        else:
            out.append([prev + 1, hi, [m], winners[m]])
        prev = m
    return [tuple(r) for r in out]


def _rule_name(lo: int, hi: int | None) -> str:
    if hi is None:
        return f"m{lo}+"
    return f"m{lo}" if lo == hi else f"m{lo}-{hi}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.4g} ms"


def _flow(d: dict) -> str:
    return yaml.safe_dump(d, default_flow_style=True, sort_keys=False, width=10**6).strip()


def render_config(s: TuneSettings, base, results: dict[str, OpResult], command: str) -> str:
    """The deployment YAML: the tuned-over file's settings, each tuned op's routing replaced."""
    env = environment()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cpu = _cpu_model()
    lines = [
        f"# Tuned by `opregistry tune` on {now}: routing measured on this machine only.",
        f"# machine: {env['machine']}{f', {cpu}' if cpu else ''}; threads: {env['threads']}",
        f"# torch {env['torch']} (quantized engine {env['quantized_engine']}), triton {env['triton']}, "
        f"python {env['python']}",
        f"# backend {s.backend}, execution {'/'.join(sorted(set().union(*(r.executions for r in results.values()))))}"
        f", device {base.device or 'detected'}; "
        f"shapes {' '.join(f'{k}x{n}' for k, n in s.shapes)}; M {' '.join(map(str, s.ms))}; "
        f"{s.rounds} rounds of {s.min_time} s, medians",
        f"# command: {command}",
        "# Above each rule, per measured M it covers: the chosen kernel, then per shape its time vs that",
        "# of PyTorch's own op (nothing enabled) and the ratio of the two (> 1: the kernel is faster).",
    ]
    data = dict(_deployment_data(s))
    data["backend"] = s.backend
    for key, value in _overrides(s).items():
        data[key] = value
    ops = data.pop("ops", None) or {}
    head = {k: v for k, v in data.items() if k != "backend"}
    lines.append(f"backend: {s.backend}")
    if head:
        lines.append(yaml.safe_dump(head, sort_keys=False).rstrip())
    lines.append("ops:")
    for op in dict.fromkeys([*ops, *results]):
        settings = dict(ops.get(op) or {})
        res = results.get(op)
        if res is None:
            lines.append(f"  {op}:")
            lines.extend("    " + ln for ln in yaml.safe_dump(settings, sort_keys=False).splitlines())
            continue
        settings.pop("routing", None)
        all_pytorch = all(res.times[(PYTORCH, sh, m)] <= res.times[(res.winners[m], sh, m)]
                          for m in s.ms for sh in s.shapes)
        lines.append(f"  {op}:")
        if all_pytorch:
            settings["enabled"] = False
            lines.append("    # PyTorch's own op, nothing enabled, was the fastest at every measured M and shape.")
        for ln in yaml.safe_dump(settings, sort_keys=False).splitlines() if settings else ():
            lines.append("    " + ln)
        lines.append("    routing:")
        rules = {describe_rule(c): c for c in res.candidates}
        for lo, hi, measured, winner in _ranges(s.ms, res.winners):
            for m in measured:
                cells = "; ".join(f"{k}x{n} {_ms(res.times[(winner, (k, n), m)])} vs "
                                  f"{_ms(res.times[(PYTORCH, (k, n), m)])} "
                                  f"({res.times[(PYTORCH, (k, n), m)] / res.times[(winner, (k, n), m)]:.2f}x)"
                                  for k, n in s.shapes)
                lines.append(f"      # M={m}: {winner}: {cells}")
            rule = {"name": _rule_name(lo, hi), **({"when": {"m_max": hi}} if hi is not None else {}),
                    **rules[winner]}
            lines.append(f"      - {_flow(rule)}")
    return "\n".join(lines) + "\n"


def _deployment_data(s: TuneSettings) -> dict:
    path = s.config or os.environ.get("OPREGISTRY_CONFIG")
    if not path:
        return {}
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def report(s: TuneSettings, results: dict[str, OpResult], out=None) -> None:
    """Per op and M: every candidate's time and ratio to PyTorch, the winner marked."""
    out = out or sys.stdout
    for op, res in results.items():
        print(f"\n{op} (time per call; ratio = PyTorch's time / the candidate's, > 1 is faster):", file=out)
        for k, n in s.shapes:
            print(f"  {k}x{n}", file=out)
            for m in s.ms:
                base = res.times[(PYTORCH, (k, n), m)]
                print(f"    M={m:<5} pytorch {_ms(base)}", file=out)
                for label in res.labels():
                    if label in res.failures:
                        continue
                    t = res.times[(label, (k, n), m)]
                    mark = "  <- chosen" if res.winners[m] == label else ""
                    print(f"      {label:<34} {_ms(t):>12} {base / t:6.2f}x{mark}", file=out)
        for label, err in res.failures.items():
            print(f"  not chosen, it failed: {label}: {err}", file=out)
        for label, notes in res.notes.items():
            for note in sorted(notes):
                print(f"  note, {label}: {note}", file=out)


def write(path: str, text: str, backend: str) -> None:
    """Write the tuned file, then load it as ``registry.enable`` would (a file the
    registry rejects is not left behind)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    try:
        registry.default_registry().build_config(backend, config=tmp)
    except Exception:
        os.remove(tmp)
        raise
    os.replace(tmp, path)


def command_line(argv: list[str] | None = None) -> str:
    return shlex.join(["opregistry", *(argv if argv is not None else sys.argv[1:])])
