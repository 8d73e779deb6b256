"""The agent's manifests as `kubectl kustomize deploy/kubernetes` renders them, for the install tests."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "deploy" / "kubernetes"


@functools.cache
def _kustomized() -> str:
    """kubectl's render of the base, once per test run."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is missing: these tests render deploy/kubernetes with `kubectl kustomize` "
                    "(install kubectl >= 1.27, which bundles kustomize v5)")
    done = subprocess.run([kubectl, "kustomize", str(BASE)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"kubectl kustomize {BASE} failed: {done.stderr}"
    return done.stdout


def kustomize() -> list[dict[str, Any]]:
    """Every object of `kubectl kustomize deploy/kubernetes` (a fresh copy per call)."""
    return [doc for doc in yaml.safe_load_all(_kustomized()) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The object of `kind` named `name`."""
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]
