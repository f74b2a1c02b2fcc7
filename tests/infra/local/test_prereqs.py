"""The README's two commands check what they need before installing anything, in that order:
tools first, then the virtual environment, then the ports. The system packages they need are
installed by the check itself on Debian or Ubuntu as root (apt-get, here a fake that logs its
arguments); elsewhere the check stops with the one command to run. Each other missing tool gets its fix."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import REPO

# Each test runs make or the prerequisite script in a subshell (about 35 s in all): not a unit test.
pytestmark = pytest.mark.slow

SCRIPT = REPO / "infra/local/check_prereqs.sh"
DEBIAN = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
APT_GET = """#!/bin/bash
echo "DEBIAN_FRONTEND=${{DEBIAN_FRONTEND:-}} $*" >> {log}
[ "$1" = install ] || exit 0
{fail}
for arg in "$@"; do
  case "$arg" in install | -*) ;; *) [ -f {provides}/"$arg" ] && bash {provides}/"$arg" ;; esac
done
exit 0
"""
# What each (fake) package puts on PATH when the fake apt-get installs it.
TOOLS = {
    "default-jre-headless": {"java": "echo 'openjdk version \"17.0.15\" 2025-04-15' >&2"},
    "dicom3tools": {"dciodvfy": "exit 0"},
    "dcmtk": {"dcmdump": "exit 0"},
}


class Machine:
    """A PATH without some tools, a fake `id`, a fake apt-get that logs and 'installs', a fake /etc."""

    def __init__(self, tmp_path: Path, hide=(), uid=0, os_release=DEBIAN, google_repo=False):
        self.root = tmp_path
        self.shims = tmp_path / "shims"
        self.provides = tmp_path / "provides"
        self.etc = tmp_path / "etc"
        self.log = tmp_path / "apt.log"
        for d in (self.shims, self.provides, self.etc / "apt/sources.list.d"):
            d.mkdir(parents=True)
        (self.etc / "os-release").write_text(os_release)
        if google_repo:
            (self.etc / "apt/sources.list.d/google-cloud-sdk.list").write_text(
                "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n"
            )
        self.tool("id", f"echo {uid}")
        self.apt_get()
        for pkg, tools in TOOLS.items():
            self.package(pkg, tools)
        # Every executable of this PATH, less the hidden ones and the real apt-get, id and dpkg.
        system = tmp_path / "system"
        system.mkdir()
        hidden = {*hide, "apt-get", "id", "dpkg"}
        for d in os.environ["PATH"].split(os.pathsep):
            if not os.path.isdir(d):
                continue
            for name in os.listdir(d):
                full = os.path.join(d, name)
                if name in hidden or os.path.lexists(system / name) or not os.access(full, os.X_OK):
                    continue
                if os.path.isfile(full):
                    (system / name).symlink_to(full)
        self.path = f"{self.shims}{os.pathsep}{system}"

    def tool(self, name: str, body: str) -> None:
        path = self.shims / name
        path.write_text(f"#!/bin/bash\n{body}\n")
        path.chmod(0o755)

    def apt_get(self, fail: bool = False) -> None:
        self.tool(
            "apt-get", APT_GET.format(log=self.log, provides=self.provides, fail="exit 100" if fail else "")
        )

    def package(self, pkg: str, tools: dict[str, str]) -> None:
        lines = []
        for name, body in tools.items():
            lines += [
                f"printf '%s\\n' '#!/bin/bash' {shlex.quote(body)} > {self.shims / name}",
                f"chmod 755 {self.shims / name}",
            ]
        (self.provides / pkg).write_text("\n".join(lines) + "\n")

    def apt_calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def check(self, *what: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(SCRIPT), *what],
            env={
                **{k: v for k, v in os.environ.items() if k != "DEBIAN_FRONTEND"},
                "PATH": self.path,
                "CHECK_PREREQS_ETC": str(self.etc),
                **env,
            },
            capture_output=True,
            text=True,
            timeout=120,
        )


def installed(calls: list[str]) -> list[str]:
    """The packages of the one `apt-get install`, after checking it ran the way CI's did."""
    assert len(calls) == 2, calls
    assert calls[0].endswith(" update -qq"), calls
    env, command, *flags_and_packages = calls[1].split()
    assert (env, command) == ("DEBIAN_FRONTEND=noninteractive", "install"), calls
    assert flags_and_packages[:3] == ["-y", "-qq", "--no-install-recommends"], calls
    return flags_and_packages[3:]


@pytest.mark.parametrize(
    ("what", "expected"),
    [("stack", ["default-jre-headless"]), ("test", ["default-jre-headless", "dicom3tools", "dcmtk"])],
)
def test_root_on_debian_installs_exactly_the_missing_packages(what, expected, tmp_path):
    """java, dciodvfy and dcmdump are missing; the stack needs only Java, the tests all three."""
    machine = Machine(tmp_path, hide=("java", "dciodvfy", "dcmdump"))
    done = machine.check(what)
    assert done.returncode == 0, done.stdout + done.stderr
    assert installed(machine.apt_calls()) == expected
    label = "make test" if what == "test" else "make up/make demo"
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    assert lines[0].startswith(f"installing what {label} needs and this machine lacks: "), lines
    assert all(f"{pkg} (" in lines[0] for pkg in expected), lines
    assert "orthanc" not in lines[0] and "chromium" not in lines[0], lines
    assert "dicom3tools" in lines[0] if what == "test" else "dicom3tools" not in lines[0]
    assert done.stderr == ""


def test_nothing_missing_installs_nothing(tmp_path):
    machine = Machine(tmp_path)
    done = machine.check("test")
    assert done.returncode == 0, done.stderr
    assert machine.apt_calls() == [] and done.stdout == ""


@pytest.mark.parametrize(
    ("os_release", "installs"),
    [
        ('NAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\n', True),
        ('NAME="Linux Mint"\nID=linuxmint\nID_LIKE="ubuntu debian"\n', True),
        ('NAME="Fedora Linux"\nID=fedora\n', False),
        ('NAME="Rocky Linux"\nID="rocky"\nID_LIKE="rhel centos fedora"\n', False),
    ],
)
def test_only_debian_and_ubuntu_install(os_release, installs, tmp_path):
    machine = Machine(tmp_path, hide=("dciodvfy", "dcmdump"), os_release=os_release)
    done = machine.check("test")
    if installs:
        assert done.returncode == 0, done.stderr
        assert installed(machine.apt_calls()) == ["dicom3tools", "dcmtk"]
    else:
        assert done.returncode == 1
        assert machine.apt_calls() == []
        assert done.stderr.splitlines()[-1].endswith(
            ". On Debian/Ubuntu run: apt-get install dicom3tools dcmtk"
            " (elsewhere install the same with your package manager)"
        ), done.stderr


def test_not_root_stops_with_the_one_command(tmp_path):
    machine = Machine(tmp_path, hide=("java", "dciodvfy", "dcmdump"), uid=1000)
    done = machine.check("test")
    assert done.returncode == 1
    assert machine.apt_calls() == [] and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("prerequisite missing for make test: default-jre-headless (Java 11+"), line
    assert line.endswith(". Run: sudo apt-get install default-jre-headless dicom3tools dcmtk"), line


@pytest.mark.parametrize("value", ["0", "no"])
def test_opting_out_only_checks(value, tmp_path):
    machine = Machine(tmp_path, hide=("dciodvfy",))
    done = machine.check("test", INSTALL_SYSTEM_PACKAGES=value)
    assert done.returncode == 1
    assert machine.apt_calls() == []
    assert done.stderr.splitlines() == [
        "prerequisite missing for make test: dicom3tools (dciodvfy: the DICOM validator the tests run)."
        " Run: apt-get install dicom3tools"
    ]


def test_a_failed_install_stops(tmp_path):
    machine = Machine(tmp_path, hide=("dcmdump",))
    machine.apt_get(fail=True)
    done = machine.check("test")
    assert done.returncode == 1
    assert len(machine.apt_calls()) == 2
    assert "apt-get could not install dcmtk" in done.stderr


def test_what_is_still_missing_after_installing_is_reported(tmp_path):
    """apt-get succeeds but the tool is still not there: the check looks again rather than trusting it."""
    machine = Machine(tmp_path, hide=("dcmdump",))
    (machine.provides / "dcmtk").unlink()
    done = machine.check("test")
    assert done.returncode == 1
    assert installed(machine.apt_calls()) == ["dcmtk"]
    assert done.stderr.splitlines()[-1].endswith(". Run: apt-get install dcmtk"), done.stderr


def test_gcloud_comes_from_googles_apt_repo_where_it_is_configured(tmp_path):
    machine = Machine(tmp_path, hide=("gcloud", "gsutil"), google_repo=True)
    sdk = tmp_path / "sdk"
    emulator = sdk / "platform/pubsub-emulator/bin/cloud-pubsub-emulator"
    machine.package("google-cloud-cli", {"gcloud": f"echo {sdk}", "gsutil": "exit 0"})
    (machine.provides / "google-cloud-cli-pubsub-emulator").write_text(
        f"mkdir -p {emulator.parent} && touch {emulator} && chmod 755 {emulator}\n"
    )
    done = machine.check("stack")
    assert done.returncode == 0, done.stderr
    assert installed(machine.apt_calls()) == ["google-cloud-cli", "google-cloud-cli-pubsub-emulator"]
    assert "google-cloud-cli (gcloud: the Google Cloud CLI)" in done.stdout


def test_without_googles_repo_gcloud_gets_its_own_fix(tmp_path):
    """Java is still installed; gcloud is not (no repository for it), and the check says how."""
    machine = Machine(tmp_path, hide=("gcloud", "gsutil", "java"))
    done = machine.check("stack")
    assert done.returncode == 1
    assert installed(machine.apt_calls()) == ["default-jre-headless"]
    assert (
        "gcloud not found" in done.stderr and "gcloud components install beta pubsub-emulator" in done.stderr
    )


def test_an_old_java_is_replaced(tmp_path):
    machine = Machine(tmp_path, hide=("java",))
    machine.tool("java", "echo 'java version \"1.8.0_392\"' >&2")
    done = machine.check("stack", INSTALL_SYSTEM_PACKAGES="0")
    assert done.returncode == 1
    assert "default-jre-headless (java here is version 8: the Pub/Sub emulator needs Java 11+)" in done.stderr


def test_missing_tools_are_named_with_their_fix(tmp_path):
    """A machine with Python but no Java, gcloud, gsutil or apt-get: each is reported with its fix."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("python3.11", "bash", "sed", "head", "mktemp", "rm", "env", "tr"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    done = subprocess.run(
        ["bash", str(SCRIPT), "stack"],
        env={**os.environ, "PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "default-jre-headless (Java 11+ for the Pub/Sub emulator)" in done.stderr
    assert "apt-get install default-jre-headless" in done.stderr
    assert (
        "gcloud not found" in done.stderr and "gcloud components install beta pubsub-emulator" in done.stderr
    )


@pytest.mark.parametrize("what", ["stack", "test"])
def test_present_tools_pass(what):
    """This machine has what the README's commands need (make test installed it where it could)."""
    done = subprocess.run(
        ["bash", str(SCRIPT), what],
        env={**os.environ, "INSTALL_SYSTEM_PACKAGES": "0"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_one_list_of_packages_and_ci_installs_nothing_itself():
    rows = [
        line.split(maxsplit=3)
        for line in (REPO / "infra/local/debian-packages").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    levels = {row[0]: row[1] for row in rows}
    assert all(len(row) == 4 for row in rows), rows
    assert levels == {
        "default-jre-headless": "stack",
        "orthanc": "stack",
        "orthanc-dicomweb": "stack",
        "npm": "stack",
        "postgresql": "test",
        "chromium": "test",
        "dicom3tools": "test",
        "dcmtk": "test",
    }
    assert not (REPO / ".ci/debian-packages").exists()
    ci = (REPO / ".ci/run").read_text()
    assert "apt-get" not in ci and "dpkg" not in ci
    assert ci.index("make test") < ci.index("make demo")


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


def test_make_test_checks_tools_before_the_environment(tmp_path):
    done = subprocess.run(
        ["make", "-n", "test", f"VENV={tmp_path / 'no-venv-yet'}", f"CHECKOV_VENV={tmp_path / 'no-checkov'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.index("check_prereqs.sh test") < text.index("-m venv") < text.index("-m pytest"), text
