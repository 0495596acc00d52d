"""The built wheel as users get it: requirements that resolve beside torch's
own triton pin and a user's Triton-CPU build, one import name, and an install
that leaves an existing triton alone and works beside colliding local modules."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

packaging = pytest.importorskip("packaging")
from packaging.markers import default_environment  # noqa: E402
from packaging.requirements import Requirement  # noqa: E402
from packaging.version import Version  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# What users have next to us. torch 2.13.0's wheels on the public index (x86_64
# CUDA build and aarch64 build) require triton==3.7.1; Triton-CPU built from its
# `legacy` branch installs itself as the distribution triton 3.0.0; PyPI's newest is 3.9.
ENVIRONMENTS = {
    "index torch (x86_64)": ("x86_64", {"torch": "2.13.0", "triton": "3.7.1"}),
    "index torch (aarch64)": ("aarch64", {"torch": "2.13.0", "triton": "3.7.1"}),
    "Triton-CPU build (aarch64)": ("aarch64", {"torch": "2.13.0", "triton": "3.0.0"}),
    "oldest torch we support (x86_64)": ("x86_64", {"torch": "2.4.0", "triton": "3.0.0"}),
    "PyPI triton 3.9 (x86_64)": ("x86_64", {"torch": "2.13.0", "triton": "3.9.0"}),
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy: an in-tree build writes opregistry.egg-info into the
    # checkout, whose metadata would then shadow the installed distribution's.
    src = tmp_path_factory.mktemp("src") / "opregistry"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "venv", "build", "dist", "*.egg-info",
                                                             "__pycache__", ".hypothesis", ".pytest_cache", "docs"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
                   check=True, capture_output=True, text=True)
    (path,) = out.glob("opregistry-*.whl")
    return path


def metadata(wheel: Path) -> tuple[list[Requirement], list[str], str]:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    reqs = [Requirement(line.split(":", 1)[1].strip()) for line in meta.splitlines()
            if line.startswith("Requires-Dist:")]
    return reqs, names, entry_points


def runtime_requirements(reqs: list[Requirement], machine: str) -> list[Requirement]:
    env = {**default_environment(), "platform_machine": machine, "sys_platform": "linux",
           "platform_system": "Linux", "extra": ""}
    return [r for r in reqs if r.marker is None or r.marker.evaluate(env)]


@pytest.mark.parametrize("name", list(ENVIRONMENTS))
def test_runtime_requirements_accept_what_users_have(wheel, name):
    machine, installed = ENVIRONMENTS[name]
    for req in runtime_requirements(metadata(wheel)[0], machine):
        if req.name in installed:
            assert req.specifier.contains(Version(installed[req.name]), prereleases=True), (
                f"{req} rejects {req.name} {installed[req.name]} ({name})")


def test_triton_is_never_a_runtime_requirement(wheel):
    """pip must never install, upgrade or replace a triton: not torch's pinned one,
    not a user's Triton-CPU build. Only the interpreter (and test) extras ask for it."""
    reqs = metadata(wheel)[0]
    for machine in ("x86_64", "aarch64"):
        assert "triton" not in {r.name for r in runtime_requirements(reqs, machine)}
    interpreter = [r for r in reqs if r.name == "triton"]
    assert interpreter and all(r.marker is not None and "interpreter" in str(r.marker) for r in interpreter)
    # ... and the interpreter extra still resolves beside torch 2.13.0's own triton pin.
    assert all(r.specifier.contains(Version("3.7.1")) for r in interpreter)


def test_the_only_import_name_is_opregistry(wheel):
    _, names, entry_points = metadata(wheel)
    top = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert top == {"opregistry"}
    assert any(n.startswith("opregistry/configs/arm/") and n.endswith(".yaml") for n in names)
    targets = [line.split("=", 1)[1].strip() for line in entry_points.splitlines() if "=" in line]
    assert targets and all(t.startswith("opregistry.") for t in targets), targets


def _fake_triton(site: Path) -> Path:
    """A distribution named triton 3.0.0, as a Triton-CPU build installs it."""
    pkg = site / "triton"
    pkg.mkdir()
    marker = pkg / "__init__.py"
    marker.write_text("__version__ = '3.0.0'  # stands for a Triton-CPU build\n")
    info = site / "triton-3.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: triton\nVersion: 3.0.0\n")
    (info / "INSTALLER").write_text("pip\n")
    (info / "RECORD").write_text("triton/__init__.py,,\ntriton-3.0.0.dist-info/METADATA,,\n"
                                 "triton-3.0.0.dist-info/INSTALLER,,\ntriton-3.0.0.dist-info/RECORD,,\n")
    return marker


def test_wheel_in_a_fresh_venv_keeps_triton_and_ignores_colliding_local_modules(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    marker = _fake_triton(site)
    before = marker.read_text()
    torch_req = f"torch=={__import__('torch').__version__.split('+')[0]}"
    install = subprocess.run([py, "-m", "pip", "install", "-q", torch_req, str(wheel)],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    shown = subprocess.run([py, "-m", "pip", "show", "triton"], capture_output=True, text=True).stdout
    assert "Version: 3.0.0" in shown and marker.read_text() == before, "pip replaced the user's triton"

    # A user project with its own `backends/` package and `registry.py`.
    project = tmp_path / "project"
    (project / "backends").mkdir(parents=True)
    (project / "backends" / "__init__.py").write_text("raise ImportError('the user project backends')\n")
    (project / "registry.py").write_text("raise ImportError('the user project registry')\n")
    code = (
        "import torch\n"
        "from opregistry import registry\n"
        "names = sorted(b['name'] for b in registry.backends())\n"
        "assert {'arm', 'cuda', 'reference'} <= set(names), names\n"
        "arm = next(b for b in registry.backends() if b['name'] == 'arm')\n"
        "print('arm:', arm['available'], arm['reason'])\n"
        "x = torch.randn(3, 16)\n"
        "w = torch.quantize_per_tensor(torch.randn(8, 16), 0.02, 0, torch.qint8)\n"
        "packed = torch.ops.quantized.linear_prepack(w, None)\n"
        "with registry.enabled(backend='reference'):\n"
        "    y = torch.ops.quantized.linear_dynamic(x, packed)\n"
        "    assert registry.status()['ops']['quantized::linear_dynamic']['calls'] == 1\n"
        "print('ok', tuple(y.shape))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPREGISTRY_", "PYTHON"))}
    run = subprocess.run([py, "-c", code], cwd=project, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ok (3, 8)" in run.stdout
    # The stand-in triton is not a usable Triton: the arm backend says what it found.
    assert "arm: False triton 3.0.0 is installed but cannot be imported" in run.stdout, run.stdout
    cli = subprocess.run([env_dir / "bin" / "opregistry", "list"], cwd=project, capture_output=True, text=True,
                         env=env)
    assert cli.returncode == 0 and "reference" in cli.stdout, cli.stderr[-3000:]
