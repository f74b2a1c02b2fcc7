"""The README's two commands check what they need before installing anything, in that order:
tools first, then the virtual environment, then the ports; each missing tool gets its fix."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.support import REPO


@pytest.mark.parametrize("target", ["demo", "up"])
def test_stack_targets_check_tools_then_install_then_check_ports(target, tmp_path):
    venv = tmp_path / "no-venv-yet"
    done = subprocess.run(
        ["make", "-n", target, f"VENV={venv}"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()

    def first(text: str) -> int:
        return next(i for i, line in enumerate(lines) if text in line)

    tools, install, ports = first("check_prereqs.sh stack"), first("-m venv"), first("check_prereqs.sh ports")
    start = first("infra.local.demo" if target == "demo" else "infra.local.stack_cli up")
    assert tools < install < ports < start, done.stdout


def test_missing_tools_are_named_with_their_fix(tmp_path):
    """On a machine with Python but no Java, gcloud or gsutil, every one is reported, each with its fix."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("python3.11", "bash", "sed", "head", "mktemp", "rm", "env"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    done = subprocess.run(
        ["bash", str(REPO / "infra/local/check_prereqs.sh"), "stack"],
        env={**os.environ, "PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "java not found" in done.stderr and "apt-get install default-jre-headless" in done.stderr
    assert (
        "gcloud not found" in done.stderr and "gcloud components install beta pubsub-emulator" in done.stderr
    )


def test_present_tools_pass(tmp_path):
    done = subprocess.run(
        ["bash", str(REPO / "infra/local/check_prereqs.sh"), "stack"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
