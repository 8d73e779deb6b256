"""Manifests sent by the CLI, parsed and validated with the origin (file, document) of every object."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from velvet.errors import InvalidManifest
from velvet.model import KubeObject
from velvet.model.codec import parse_documents

_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser when built


@dataclass(frozen=True)
class Origin:
    """Where an object came from: file path and 1-based document index."""

    path: str
    document: int


def _origins(text: str, path: str) -> list[Origin]:
    """One origin per object parse_documents yields (empty documents skipped, Lists flattened)."""
    origins: list[Origin] = []
    for index, doc in enumerate(yaml.load_all(text, Loader=_LOADER), start=1):
        if doc is None:
            continue
        count = len(doc.get("items") or []) if isinstance(doc, dict) and doc.get("kind") == "List" else 1
        origins += [Origin(path, index)] * count
    return origins


def parse_all(documents: Sequence[Mapping[str, str]]) -> tuple[list[KubeObject], list[Origin]]:
    """Every object of every {path, text} document; the first invalid document raises InvalidManifest."""
    objects: list[KubeObject] = []
    origins: list[Origin] = []
    for doc in documents:
        parsed = parse_documents(doc["text"], doc["path"])
        objects += parsed
        origins += _origins(doc["text"], doc["path"])[: len(parsed)]
    return objects, origins


def relocate(error: InvalidManifest, origins: Sequence[Origin]) -> InvalidManifest:
    """Re-aim an error the store raised about object N (1-based) at that object's file and document."""
    if 1 <= error.document <= len(origins):
        origin = origins[error.document - 1]
        return InvalidManifest(origin.path, origin.document, error.field, error.reason)
    return error
