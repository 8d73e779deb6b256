"""How the etcd client reads a watch stream: an answer at a time, in pieces, events skipped undecoded."""

from __future__ import annotations

import base64
import http.client
import io
import json
from typing import Any, cast

import pytest

from velvet.sources import etcd_client
from velvet.sources.etcd_client import _read_answer


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def answer(revision: int, *keys: str, **fields: Any) -> bytes:
    """One watch answer as etcd's gateway writes it: a line of JSON."""
    events = [{"kv": {"key": b64(k), "value": b64(f"value of {k}"), "create_revision": "2",
                      "mod_revision": str(revision)}} for k in keys]
    result = {"header": {"revision": str(revision)}, **fields, **({"events": events} if events else {})}
    return json.dumps({"result": result}).encode() + b"\n"


def stream(*answers: bytes) -> Any:
    """What `_read_answer` reads: a buffered stream with readline(limit), as an HTTP response is."""
    return cast(Any, io.BufferedReader(io.BytesIO(b"".join(answers))))


def test_answers_are_read_one_at_a_time_until_the_stream_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(etcd_client, "_PIECE", 16)  # every answer in many pieces
    resp = stream(answer(5, created=True), answer(7, "/a", "/b"), answer(9, "/c"))
    first, second, third = (_read_answer(resp, None) for _ in range(3))
    assert first is not None
    assert (first.revision, first.count, first.events) == (5, 0, [])
    assert json.loads(first.text)["result"]["created"] is True
    assert second is not None
    assert (second.revision, second.count, second.text) == (7, 2, b"")
    assert [(e.kv.key, e.kv.value, e.kv.mod_revision) for e in second.events] == [
        ("/a", b"value of /a", 7), ("/b", b"value of /b", 7)]
    assert third is not None
    assert [e.kv.key for e in third.events] == ["/c"]
    assert _read_answer(resp, None) is None


def test_skipped_events_are_counted_and_left_out() -> None:
    resp = stream(answer(7, "/a", "/head", "/b"))
    read = _read_answer(resp, lambda key, revision: revision == 7 and key != "/head")
    assert read is not None
    assert read.count == 3
    assert [e.kv.key for e in read.events] == ["/head"]


def test_an_answer_cut_short_is_an_error_not_a_change(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(etcd_client, "_PIECE", 16)
    with pytest.raises(http.client.IncompleteRead):
        _read_answer(stream(answer(7, "/a", "/b")[:-40]), None)
