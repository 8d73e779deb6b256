"""Questions asked of the objects the API answers with (the JSON kubectl prints)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def is_ready(pod: Mapping[str, Any]) -> bool:
    """The pod's Ready condition is True."""
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in pod.get("status", {}).get("conditions", []))
