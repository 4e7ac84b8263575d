"""The Makefile's install paths: `make demo` without a GPU compiles nothing; `make test` (CI) builds everything."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def dry_run(*args: str, venv: Path) -> str:
    """What `make -n ARGS` would run for a fresh venv at ``venv`` (nothing is run)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # under make test
    out = subprocess.run(["make", "-n", f"VENV={venv}", *args], cwd=ROOT, capture_output=True, text=True, check=True,
                         env=env)
    return out.stdout


def test_demo_without_a_gpu_installs_the_runtime_packages_and_no_extension(tmp_path):
    commands = dry_run("demo", "DEMO_BUILD=light", venv=tmp_path / "venv")
    assert "SPLITKERN_SKIP_CUDA_BUILD=1" in commands
    assert "requirements-dev.txt" not in commands  # no nvidia-cutlass, no dev tools
    assert "torch==" in commands  # the pinned torch of requirements-dev.txt
    assert "splitkern train" in commands and "splitkern plot runs/demo" in commands
    results = dry_run("results", venv=tmp_path / "venv")  # make results needs the same light install only
    assert "SPLITKERN_SKIP_CUDA_BUILD=1" in results and "docs/make_results.py" in results


def test_demo_with_a_gpu_and_make_test_build_the_whole_extension(tmp_path):
    for args in (("demo", "DEMO_BUILD=full"), ("test",)):
        commands = dry_run(*args, venv=tmp_path / "venv")
        assert "pip install -q -r requirements-dev.txt" in commands, args
        assert "SPLITKERN_SKIP_CUDA_BUILD" not in commands and "SPLITKERN_CPU_ONLY_BUILD" not in commands, args
