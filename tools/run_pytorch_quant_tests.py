"""Run PyTorch's own dynamic-quantization tests with an opregistry backend enabled.

The tests (in the PyTorch repository, not part of opregistry) exercise
``nn.quantized.dynamic.Linear`` through eager mode, the module fast path,
TorchScript scripting and tracing, graph-mode (JIT) quantization, serialization
and every quantized engine of the host::

    test/quantization/core/test_quantized_module.py::TestDynamicQuantizedModule
    test/quantization/eager/test_quantize_eager_ptq.py::TestQuantizeEagerPTQDynamic
    test/quantization/jit/test_quantize_jit.py::TestQuantizeDynamicJitPasses
    test/quantization/jit/test_quantize_jit.py::TestQuantizeDynamicJitOps
    test/quantization/jit/test_quantize_jit.py::TestQuantizeJit::test_single_linear_dynamic

Point it at a PyTorch source checkout whose version matches the installed torch::

    git clone --depth 1 --branch v2.13.0 https://github.com/pytorch/pytorch /tmp/pytorch
    python tools/run_pytorch_quant_tests.py --pytorch-src /tmp/pytorch

Each configuration is one pytest run (``tools/pytorch_qlinear_plugin.py`` enables the
backend and counts the calls it served through the dispatcher and the module fast
path). By default three runs:

1. ``baseline``: nothing enabled (PyTorch's own kernels);
2. ``backend``: ``--backend`` (default ``arm``, interpreter execution) in PyTorch's
   activation scheme (``activation_scale: pytorch``), module fast path on;
3. ``control``: the same with ``activation_scale: per_row`` (a negative control:
   numeric tests that compare against PyTorch's op must fail, or the suite does not
   see the backend).

Exit status 0 when every test that passes in the baseline passes with the backend,
the backend served calls through both paths, and the control failed some test.
``--no-weights-only-load`` sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``: two tests
``torch.load`` a whole module, which fails since torch 2.6 with or without a backend
(the same as adding ``weights_only=False`` to those two calls). Needs pytest,
hypothesis (the ``test`` extra) and ``expecttest``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = (
    "test/quantization/core/test_quantized_module.py::TestDynamicQuantizedModule",
    "test/quantization/eager/test_quantize_eager_ptq.py::TestQuantizeEagerPTQDynamic",
    "test/quantization/jit/test_quantize_jit.py::TestQuantizeDynamicJitPasses",
    "test/quantization/jit/test_quantize_jit.py::TestQuantizeDynamicJitOps",
    "test/quantization/jit/test_quantize_jit.py::TestQuantizeJit::test_single_linear_dynamic",
)
RUNS = {
    "baseline": {"OPREGISTRY_TEST_BACKEND": "none"},
    "backend": {"OPREGISTRY_TEST_ACTIVATION_SCALE": "pytorch"},
    "control": {"OPREGISTRY_TEST_ACTIVATION_SCALE": "per_row"},
}


def run_one(name: str, args, extra_env: dict, report: Path) -> dict:
    env = {**os.environ, "OPREGISTRY_TEST_BACKEND": args.backend, "OPREGISTRY_TEST_EXECUTION": args.execution,
           "OPREGISTRY_TEST_FAST_PATH": "0" if args.no_fast_path else "1", "OPREGISTRY_TEST_REPORT": str(report),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
           **extra_env}
    if args.no_weights_only_load:
        env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    cmd = [sys.executable, "-m", "pytest", "-p", "pytorch_qlinear_plugin", "-q", "-p", "no:cacheprovider",
           "-W", "ignore::DeprecationWarning", *args.tests, *args.pytest_args]
    print(f"== {name}: {' '.join(f'{k}={v}' for k, v in extra_env.items())}", flush=True)
    proc = subprocess.run(cmd, cwd=args.pytorch_src, env=env, capture_output=not args.verbose, text=True)
    if not args.verbose:
        tail = (proc.stdout or "").strip().splitlines()[-3:]
        print("\n".join("   " + line for line in tail))
    if not report.is_file():
        raise SystemExit(f"{name}: pytest wrote no report (exit {proc.returncode}); rerun with --verbose")
    return json.loads(report.read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pytorch-src", required=True, type=Path, help="root of a PyTorch source checkout")
    ap.add_argument("--backend", default="arm", help="backend to enable (arm, reference)")
    ap.add_argument("--execution", default="interpreter", choices=("interpreter", "compiled"))
    ap.add_argument("--no-fast-path", action="store_true", help="serve through the dispatcher only")
    ap.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    ap.add_argument("--no-weights-only-load", action="store_true",
                    help="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (two tests torch.load a whole module)")
    ap.add_argument("--json", type=Path, help="write every run's report here")
    ap.add_argument("--verbose", action="store_true", help="show pytest's output")
    ap.add_argument("--tests", nargs="+", default=list(TESTS), help="pytest node ids (relative to the checkout)")
    ap.add_argument("pytest_args", nargs="*", help="extra arguments for pytest (after --)")
    args = ap.parse_args(argv)
    for test in args.tests:
        path = args.pytorch_src / test.split("::")[0]
        if not path.is_file():
            ap.error(f"{path} not found: --pytorch-src must be the root of a PyTorch source checkout")

    reports = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.runs:
            reports[name] = run_one(name, args, RUNS[name], Path(tmp) / f"{name}.json")

    print("\nrun        passed failed skipped  calls: dispatcher / module fast path")
    for name, rep in reports.items():
        t, s = rep["tally"], rep["served"]
        calls = (f"{sum(s['dispatcher'].values()):>6} / {sum(s['fast_path'].values())}"
                 if name != "baseline" else "     - / -")
        print(f"{name:<10} {t['passed']:>6} {t['failed']:>6} {t['skipped']:>7}  {calls}")

    ok = True
    if "baseline" in reports and "backend" in reports:
        base, back = reports["baseline"]["outcomes"], reports["backend"]["outcomes"]
        regressions = sorted(t for t, o in base.items() if o == "passed" and back.get(t) != "passed")
        if regressions:
            ok = False
            print(f"\n{len(regressions)} test(s) pass without the backend and not with it:")
            for t in regressions:
                print(f"  {t}: {back.get(t, 'not run')}")
        else:
            print(f"\nevery test that passes without the backend passes with it "
                  f"({sum(1 for o in base.values() if o == 'passed')} tests)")
    if "backend" in reports:
        s = reports["backend"]["served"]
        if sum(s["dispatcher"].values()) == 0 or (not args.no_fast_path and sum(s["fast_path"].values()) == 0):
            ok = False
            print("the backend did not serve calls through both the dispatcher and the module fast path")
    if "control" in reports:
        failed = sorted(t for t, o in reports["control"]["outcomes"].items() if o == "failed")
        print(f"negative control (activation_scale: per_row): {len(failed)} test(s) failed"
              + "".join(f"\n  {t}" for t in failed))
        if not failed:
            ok = False
            print("the negative control failed nothing: the suite does not see the backend")
    if args.json:
        args.json.write_text(json.dumps(reports, indent=1, sort_keys=True))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
