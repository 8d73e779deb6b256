"""Test that the store's cheap copy of an object with new metadata equals dataclasses.replace's."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from velvet.model.codec import parse_documents
from velvet.sources.txn import with_metadata

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  selector: {app: web}
  ports: [{port: 80}]
"""


def test_a_copy_with_new_metadata_equals_replace_and_leaves_the_original() -> None:
    """Test that uid, timestamp and version changed by the copy equal replace()'s object and the original
    keeps its metadata."""
    svc = parse_documents(SERVICE, "s.yaml")[0]
    changes: dict[str, Any] = {"uid": "u-1", "creation_timestamp": "2024-01-01T00:00:00Z",
                               "resource_version": 7}
    copied = with_metadata(svc, **changes)
    assert copied == replace(svc, metadata=replace(svc.metadata, **changes))
    assert type(copied) is type(svc)
    assert (svc.metadata.uid, svc.metadata.resource_version) == ("", 0)


def test_an_unknown_metadata_field_is_refused() -> None:
    """Test that a misspelt field raises TypeError, as replace() does, instead of adding an attribute."""
    svc = parse_documents(SERVICE, "s.yaml")[0]
    with pytest.raises(TypeError, match="resourceVersion"):
        with_metadata(svc, resourceVersion=7)
