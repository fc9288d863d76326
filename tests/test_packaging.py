"""One install path: README, CI, Dockerfile and singularity.def cannot drift apart."""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from fmrilm_bids.dataset.derivatives import DOCKER_IMAGE

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("scripts/install.sh", "scripts/demo.sh", "scripts/test.sh", ".ci/run")


def _setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser


def test_readme_starts_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    assert text.index("```bash") < text.index("fmrilm-bids is a")


def test_every_entry_installs_through_install_sh() -> None:
    for script in ("scripts/demo.sh", "scripts/test.sh"):
        assert "bash scripts/install.sh" in (ROOT / script).read_text()
    assert "bash scripts/test.sh" in (ROOT / ".ci/run").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    assert "bash scripts/install.sh --system" in dockerfile
    assert "pip install" not in dockerfile, "the image must install only through install.sh"
    assert 'ENTRYPOINT ["fmrilm-bids"]' in dockerfile
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.M)
    assert "FMRILM_CONTAINER=docker" in dockerfile
    definition = (ROOT / "singularity.def").read_text()
    assert re.search(rf"^From: {re.escape(DOCKER_IMAGE)}:latest$", definition, re.M)
    assert "FMRILM_CONTAINER=singularity" in definition
    assert 'exec fmrilm-bids "$@"' in definition


def test_torch_pin_matches_between_install_script_and_metadata() -> None:
    script = (ROOT / "scripts/install.sh").read_text()
    torch_version = re.search(r"^TORCH_VERSION=(\S+)", script, re.M).group(1)
    requires = _setup_cfg()["options"]["install_requires"].split()
    assert f"torch=={torch_version}" in requires


def test_dependencies_are_pinned_and_fit_antspyx() -> None:
    requires = [r for r in _setup_cfg()["options"]["install_requires"].splitlines() if r]
    assert all("==" in r for r in requires), requires
    pins = dict(r.split("==") for r in requires)
    numpy = tuple(int(v) for v in pins["numpy"].split(".")[:2])
    scipy = tuple(int(v) for v in pins["scipy"].split(".")[:2])
    assert numpy < (2, 4) and scipy < (1, 16)


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_valid_bash(script: str) -> None:
    subprocess.run(["bash", "-n", str(ROOT / script)], check=True)


def test_console_scripts_resolve() -> None:
    declared = {line.split("=")[0].strip() for line in
                _setup_cfg()["options.entry_points"]["console_scripts"].splitlines() if line}
    installed = {ep.name: ep for ep in entry_points(group="console_scripts")}
    for name in declared:
        assert callable(installed[name].load()), name


def test_a_test_session_removes_its_temporary_folder(tmp_path: Path) -> None:
    """A full run writes several GB under the session folder; CI machines share their disk."""
    env = {k: v for k, v in os.environ.items() if k != "FMRILM_TEST_ROOT"}
    env["TMPDIR"] = str(tmp_path)
    node = "tests/test_packaging.py::test_readme_starts_with_the_two_commands"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "no:xdist", node], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not list(tmp_path.glob("fmrilm-tests-*"))
