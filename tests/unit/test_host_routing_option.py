"""Test the agent's --host-routing: what it tells the programs (node_config) and what status shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from velvet.agent import queries
from velvet.agent.config import AgentConfig
from velvet.agent.node import Agent
from velvet.cli.status import render
from velvet.datapath.codecs import CODECS
from velvet.datapath.fake import FakeDatapath
from velvet.datapath.host_routing import CHECK
from velvet.datapath.protocol import FeatureCheck
from velvet.datapath.structs import NodeFlag
from velvet.datapath.tables import NodeSettings
from velvet.errors import NotSupported

PROBED = (FeatureCheck(CHECK, True, "bpf_fib_lookup and bpf_redirect_neigh work in tc programs", "-"),)
MISSING = (FeatureCheck(CHECK, False, "missing bpf_redirect_neigh (need Linux >= 5.10)", "-"),)


def start(tmp_path: Path, mode: str, features: tuple[FeatureCheck, ...]) -> Agent:
    """An agent with an uplink on a fake datapath whose kernel checks are `features`, started."""
    config = AgentConfig(sandbox="unit", node_ips=("192.168.77.2",), uplink="uplink0", state_dir=tmp_path,
                         host_routing=mode)
    agent = Agent(config, FakeDatapath(features))
    agent.start()
    return agent


@pytest.mark.parametrize(("mode", "features", "active"), [
    ("auto", PROBED, True),
    ("auto", MISSING, False),
    ("bpf", PROBED, True),
    ("legacy", PROBED, False),
])
def test_host_routing_follows_the_option_and_the_kernel_probe(
        tmp_path: Path, mode: str, features: tuple[FeatureCheck, ...], active: bool) -> None:
    """Test that the programs are told to forward themselves for bpf, and for auto only when the kernel
    probe passed, never for legacy, and that `velvet status` (text and JSON) says which is active."""
    agent = start(tmp_path, mode, features)
    assert agent.datapath.read("node_config")[0] == NodeSettings("192.168.77.2", host_routing=active)
    status = queries.status(agent)
    assert status["agent"]["host_routing"] == {"mode": "BPF" if active else "Legacy", "requested": mode}
    status["flows"] = {}
    assert f"Host Routing:  {'BPF' if active else 'Legacy'}" in render(status).splitlines()
    agent.store.close()


def test_host_routing_bpf_on_a_kernel_without_the_helpers_is_refused(tmp_path: Path) -> None:
    """Test that asking for bpf on a kernel whose probe failed stops the start with one clear line that
    names the option and the kernel needed, before the programs are told anything."""
    dp = FakeDatapath(MISSING)
    config = AgentConfig(sandbox="unit", uplink="uplink0", node_ips=("192.168.77.2",), state_dir=tmp_path,
                         host_routing="bpf")
    agent = Agent(config, dp)
    refused = (r"BPF host routing \(--host-routing bpf\) is not supported by this kernel "
               r"\(needs Linux >= 5\.10\)")
    with pytest.raises(NotSupported, match=refused):
        agent.start()
    assert "node_config" not in dp.tables
    agent.store.close()


def test_node_config_carries_the_host_routing_flag() -> None:
    """Test that the node_config codec puts host routing in the flags word the programs read, and back."""
    codec = CODECS["node_config"]
    on = codec.encode_value(NodeSettings("192.168.77.2", host_routing=True))
    off = codec.encode_value(NodeSettings("192.168.77.2"))
    assert (on.flags, off.flags) == (NodeFlag.HOST_ROUTING, 0)
    assert codec.decode_value(on) == NodeSettings("192.168.77.2", host_routing=True)
    assert codec.decode_value(off) == NodeSettings("192.168.77.2")
