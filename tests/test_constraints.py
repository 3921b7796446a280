"""The installed versions: requirements.txt keeps the supported ranges, constraints.txt the tested point inside
them, README's install command and CI install with both, and the environment these tests run in is that point."""
from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
UNPINNED = {"torch", "torchvision"}  # the CUDA build must fit the box: ranges only
INSTALL = "pip install -r requirements.txt -c constraints.txt"


def _requirements() -> list[Requirement]:
    out = []
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(Requirement(line))
    return out


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        assert match, f"constraints.txt: {line!r} is not NAME==VERSION"
        pins[canonicalize_name(match[1])] = match[2]
    return pins


def test_every_requirement_is_pinned_inside_its_range_except_torch():
    pins = _pins()
    for req in _requirements():
        name = canonicalize_name(req.name)
        if name in UNPINNED:
            assert name not in pins, f"{name} stays a range (the CUDA build must fit the box)"
            continue
        assert name in pins, f"{req.name} has no pin in constraints.txt; refresh it (see its header)"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"constraints.txt pins {req.name}=={pins[name]}, outside requirements.txt's {req.specifier}"
    assert not any(n.startswith(("nvidia-", "cuda-")) or n == "triton" for n in pins), "CUDA wheels follow torch"


def test_the_tests_run_on_the_pinned_versions():
    pins = _pins()
    for req in _requirements():
        name = canonicalize_name(req.name)
        if name in UNPINNED:
            continue
        assert metadata.version(req.name) == pins[name], \
            f"{req.name} {metadata.version(req.name)} is installed, constraints.txt pins {pins[name]}"


def test_readme_and_ci_install_with_the_constraints():
    readme = (ROOT / "README.md").read_text()
    assert INSTALL in readme
    assert "pip install -r requirements.txt &&" not in readme  # no install command without the pins
    ci = (ROOT / ".ci" / "run").read_text()
    installs = [line for line in ci.splitlines() if "pip install" in line and "requirements.txt" in line]
    assert installs and all("-c constraints.txt" in line for line in installs)
