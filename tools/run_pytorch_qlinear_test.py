"""Run PyTorch's own dynamic-linear op test with an opregistry backend enabled.

PyTorch's ``TestDynamicQuantizedOps.test_qlinear`` (in the PyTorch repository's
``test/quantization/core/test_quantized_op.py``) calls
``torch.ops.quantized.linear_dynamic`` / ``linear_relu_dynamic`` through the
dispatcher, so with a backend enabled it exercises that backend. Its source is
not part of opregistry; point this script at a PyTorch source checkout whose
version matches the installed torch::

    git clone --depth 1 --branch v2.13.0 https://github.com/pytorch/pytorch /tmp/pytorch
    python tools/run_pytorch_qlinear_test.py --pytorch-src /tmp/pytorch [--backend arm|reference]

It needs pytest and hypothesis (the ``test`` extra) and ``expecttest``, which
``torch.testing._internal.common_utils`` imports. The ARM backend runs in
``interpreter`` execution unless ``--execution compiled`` (Triton-CPU hosts).
Exit status is pytest's; the last line says how many calls the backend served.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

TEST = "test/quantization/core/test_quantized_op.py::TestDynamicQuantizedOps::test_qlinear"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pytorch-src", required=True, type=Path, help="root of a PyTorch source checkout")
    ap.add_argument("--backend", default="arm")
    ap.add_argument("--execution", default="interpreter", choices=("interpreter", "compiled"))
    ap.add_argument("pytest_args", nargs="*", help="extra arguments for pytest")
    args = ap.parse_args(argv)
    test_file = args.pytorch_src / TEST.split("::")[0]
    if not test_file.is_file():
        ap.error(f"{test_file} not found: --pytorch-src must be the root of a PyTorch source checkout")
    env = {**os.environ, "OPREGISTRY_TEST_BACKEND": args.backend, "OPREGISTRY_TEST_EXECUTION": args.execution,
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "pytest", "-p", "pytorch_qlinear_plugin", "-q", "-s",
           "-p", "no:cacheprovider", TEST, *args.pytest_args]
    return subprocess.call(cmd, cwd=args.pytorch_src, env=env)


if __name__ == "__main__":
    sys.exit(main())
