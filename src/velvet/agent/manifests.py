"""Manifests sent by the CLI, parsed and validated with the origin (file, document) of every object."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from velvet.errors import InvalidManifest
from velvet.model import KubeObject
from velvet.model.codec import parse_located

MAX_PATH_CHARS = 4096  # PATH_MAX
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


@dataclass(frozen=True)
class Origin:
    """Where an object came from: file path and 1-based document index."""

    path: str
    document: int


def parse_all(documents: object) -> tuple[list[KubeObject], list[Origin]]:
    """Every object of every {path, text} document; the first invalid document raises InvalidManifest."""
    objects: list[KubeObject] = []
    origins: list[Origin] = []
    for path, text in _checked(documents):
        for obj, index in parse_located(text, path):
            objects.append(obj)
            origins.append(Origin(path, index))
    return objects, origins


def relocate(error: InvalidManifest, origins: Sequence[Origin]) -> InvalidManifest:
    """Re-aim an error the store raised about object N (1-based) at that object's file and document."""
    if 1 <= error.document <= len(origins):
        origin = origins[error.document - 1]
        return InvalidManifest(origin.path, origin.document, error.field, error.reason)
    return error


def _checked(documents: object) -> list[tuple[str, str]]:
    """(path, text) of each request document; the path must print on one line, as every error names it."""
    if not isinstance(documents, list):
        raise InvalidManifest("<request>", 0, "documents", "must be a list of {path, text} objects")
    checked: list[tuple[str, str]] = []
    for i, doc in enumerate(documents):
        path = doc.get("path") if isinstance(doc, Mapping) else None
        text = doc.get("text") if isinstance(doc, Mapping) else None
        if not isinstance(path, str) or not isinstance(text, str):
            raise InvalidManifest("<request>", 0, f"documents[{i}]", "must be an object with string fields "
                                  "path and text")
        if not path or len(path) > MAX_PATH_CHARS or _CONTROL.search(path):
            raise InvalidManifest("<request>", 0, f"documents[{i}].path", f"must be 1 to {MAX_PATH_CHARS} "
                                  "characters without control characters")
        checked.append((path, text))
    return checked
