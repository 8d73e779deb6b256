"""Test that a 9,000-document apply whose last document is bad changes nothing, however it is bad."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_agent import make_agent

from velvet.errors import InvalidManifest

COUNT = 9000


def service(index: int, cluster_ip: str | None = None) -> str:
    """Service s<index> in namespace `default` with its own ClusterIP (or `cluster_ip`)."""
    address = cluster_ip or f"10.96.{index // 250 + 1}.{index % 250 + 1}"
    return (f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{index}}}\n"
            f"spec:\n  clusterIP: {address}\n  selector: {{app: s{index}}}\n  ports: [{{port: 80}}]\n")


@pytest.mark.parametrize(("last", "field"), [
    ("---\napiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: {type: Bad, ports: [{port: 80}]}\n",
     "spec.type"),
    ("---\nkind: [\n", "<end>"),  # a YAML error is named by its line: the text's end
    (service(COUNT, cluster_ip="10.96.1.1"), "spec.clusterIP"),  # s0's address: refused by the store
], ids=["invalid-field", "not-yaml", "address-taken"])
def test_a_bad_last_document_of_9000_changes_nothing(tmp_path: Path, last: str, field: str) -> None:
    """Test that the error names the last document and its field, and no object, version or map entry
    changed: nothing is stored before every document is valid."""
    agent, dp = make_agent(tmp_path)
    version = agent.store.version
    services = agent.store.objects("Service")
    tables = {name: dict(table) for name, table in dp.tables.items()}
    text = "".join(service(i) for i in range(COUNT)) + last
    field = f"line {text.count(chr(10)) + 1}" if field == "<end>" else field
    with pytest.raises(InvalidManifest) as caught:
        agent.apply([{"path": "many.yaml", "text": text}])
    assert (caught.value.path, caught.value.document, caught.value.field) == ("many.yaml", COUNT + 1, field)
    assert agent.store.version == version
    assert agent.store.objects("Service") == services
    assert {name: dict(table) for name, table in dp.tables.items()} == tables
