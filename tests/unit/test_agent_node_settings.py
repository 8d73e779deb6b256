"""Test what the agent tells the uplink programs about its node (the node_config table)."""

from __future__ import annotations

from pathlib import Path

import pytest

from velvet.agent.config import AgentConfig
from velvet.agent.node import Agent
from velvet.datapath.fake import FakeDatapath
from velvet.datapath.tables import SNAT_PORT_MAX, SNAT_PORT_MIN, NodeSettings


@pytest.mark.parametrize(("uplink", "node_ips", "snat"), [
    ("uplink0", ("192.168.77.3", "10.0.0.3"), "192.168.77.3"),
    (None, ("192.168.77.3",), "0.0.0.0"),
    ("uplink0", (), "0.0.0.0"),
])
def test_snat_address_is_the_first_node_ip_of_a_node_with_an_uplink(
        tmp_path: Path, uplink: str | None, node_ips: tuple[str, ...], snat: str) -> None:
    """Test that a node with an uplink SNATs external connections to other nodes' backends to its first
    IP, over ports above the kernel's ephemeral range, and that without an uplink or IP SNAT is off."""
    dp = FakeDatapath()
    agent = Agent(AgentConfig(sandbox="unit", node_ips=node_ips, uplink=uplink, state_dir=tmp_path), dp)
    agent.start()
    assert dp.read("node_config") == {0: NodeSettings(snat, SNAT_PORT_MIN, SNAT_PORT_MAX)}
    assert 60999 < SNAT_PORT_MIN <= SNAT_PORT_MAX <= 65535
    agent.store.close()
