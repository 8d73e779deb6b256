"""Test the agent's control plane against the in-memory datapath (no privileges, no kernel)."""

from __future__ import annotations

import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from velvet.agent import queries
from velvet.agent.config import AgentConfig
from velvet.agent.node import Agent, Dirty
from velvet.datapath.fake import FakeDatapath
from velvet.datapath.tables import EP_POLICY_INGRESS, LbMap, ServiceKey
from velvet.errors import InvalidManifest
from velvet.model import Service

MANIFEST = """
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  containers:
  - name: web
    command: ["sleep", "1000"]
    ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
"""

POLICY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"""


def make_agent(tmp_path: Path, datapath: FakeDatapath | None = None) -> tuple[Agent, FakeDatapath]:
    """An agent with its state under tmp_path and a fake datapath, started."""
    dp = datapath or FakeDatapath()
    agent = Agent(AgentConfig(sandbox="unit", node_ips=("192.168.77.2",), state_dir=tmp_path), dp)
    agent.start()
    return agent, dp


def run_pod(agent: Agent, ip: str = "10.244.0.10") -> None:
    """What the kubelet does for shop/web: wire the endpoint, report it running and ready."""
    agent.add_endpoint("shop", "web", {"ip": ip, "ifname": "vv00000001", "ifindex": 7})
    agent.report_pod("shop", "web", {"phase": "Running", "podIP": ip,
                                     "conditions": [{"type": "Ready", "status": "True"}]})


def reconcile_all(agent: Agent) -> None:
    """A reconcile pass over every service and the policy, as after any change."""
    agent.reconcile(Dirty({s.metadata.key for s in agent.store.objects("Service")}, policy=True))


def apply(agent: Agent, text: str) -> list[str]:
    """velvet apply through the agent's API method, then reconcile everything."""
    results: list[str] = agent.apply([{"path": "m.yaml", "text": text}])["results"]
    reconcile_all(agent)
    return results


def test_service_gets_frontend_and_the_pod_as_backend(tmp_path: Path) -> None:
    """Test that a selector service of a ready pod becomes a frontend with that pod as its backend."""
    agent, dp = make_agent(tmp_path)
    apply(agent, MANIFEST)
    run_pod(agent)
    reconcile_all(agent)
    service = agent.store.get("services", "shop", "web")[0]
    assert isinstance(service, Service)
    assert service.spec.cluster_ip
    cluster_ip = service.spec.cluster_ip
    services = dp.tables["lb4_services"]
    front = services[ServiceKey(cluster_ip, 80, 0, 6, 0)]
    assert front.count == 1
    slot = services[ServiceKey(cluster_ip, 80, 1, 6, 0)]
    backend = dp.tables["lb4_backends"][slot.backend_id]
    assert (backend.address, backend.port) == ("10.244.0.10", 8080)
    assert [row["service"] for row in queries.query(agent, "services", {})] == ["shop/web"]


def test_policy_isolates_the_endpoint_and_names_it(tmp_path: Path) -> None:
    """Test that a default-deny policy sets the endpoint's ingress flag and shows in endpoint list."""
    agent, dp = make_agent(tmp_path)
    apply(agent, MANIFEST)
    run_pod(agent)
    apply(agent, POLICY)
    entry = dp.tables["lxc_endpoints"]["10.244.0.10"]
    assert entry.flags & EP_POLICY_INGRESS
    rows = queries.query(agent, "endpoints", {})
    assert rows[0]["ingress_enforcement"] == "enabled"
    assert rows[0]["ingress_policies"] == ["shop/deny-all"]


def test_invalid_apply_names_file_and_document_and_stores_nothing(tmp_path: Path) -> None:
    """Test that a store-level error is reported against the file and document it came from."""
    agent, _ = make_agent(tmp_path)
    bad = MANIFEST + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: orphan, namespace: nowhere}\n" \
        "spec: {containers: [{name: c, command: [sleep]}]}\n"
    with pytest.raises(InvalidManifest) as caught:
        agent.apply([{"path": "m.yaml", "text": bad}])
    assert str(caught.value) == 'm.yaml: document 4: metadata.namespace: namespaces "nowhere" not found'
    assert "shop" not in [n.metadata.name for n in agent.store.get("namespaces")]
    broken = MANIFEST.replace('command: ["sleep", "1000"]', "command: 5")
    with pytest.raises(InvalidManifest, match=r"m.yaml: document 2: spec.containers"):
        agent.apply([{"path": "m.yaml", "text": broken}])


def test_restart_adopts_the_tables_and_rewrites_nothing(tmp_path: Path) -> None:
    """Test that a restarted agent on the same state and maps finds nothing to change."""
    agent, dp = make_agent(tmp_path)
    apply(agent, MANIFEST)
    run_pod(agent)
    apply(agent, POLICY)
    tables = {name: dict(t) for name, t in dp.tables.items()}
    agent.store.close()
    writes = dp.writes
    restarted, _ = make_agent(tmp_path, dp)
    assert dp.tables == tables
    assert dp.writes == writes
    assert [r.key for r in restarted.endpoints] == ["shop/web"]
    assert "vv00000001" in dp.attached


def test_pod_gone_detaches_and_forgets_the_endpoint(tmp_path: Path) -> None:
    """Test that the kubelet's final delete removes the endpoint from the datapath."""
    agent, dp = make_agent(tmp_path)
    apply(agent, MANIFEST)
    run_pod(agent)
    reconcile_all(agent)
    agent.pod_gone("shop", "web")
    reconcile_all(agent)
    assert "vv00000001" not in dp.attached
    assert "10.244.0.10" not in dp.tables.get("lxc_endpoints", {})


def test_deleted_service_leaves_the_maps(tmp_path: Path) -> None:
    """Test that deleting a Service removes its frontend, slots and backends from the datapath."""
    agent, dp = make_agent(tmp_path)
    apply(agent, MANIFEST)
    run_pod(agent)
    reconcile_all(agent)
    assert dp.tables["lb4_services"]
    service = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n"
    agent.delete([{"path": "d.yaml", "text": service + "spec: {ports: [{port: 80}]}\n"}], None)
    agent.reconcile(Dirty({"shop/web"}))
    assert dp.tables["lb4_services"] == {}
    assert dp.tables["lb4_backends"] == {}
    assert queries.query(agent, "services", {}) == []


def test_sctp_policy_is_applied_with_a_warning_when_the_kernel_lacks_sctp(tmp_path: Path) -> None:
    """Test that an SCTP port in a policy is applied (it still isolates) with a clear kernel warning."""
    agent, _ = make_agent(tmp_path)  # the fake datapath's kernel reports no SCTP
    sctp = POLICY.replace("policyTypes: [Ingress]", "policyTypes: [Ingress]\n  ingress:\n"
                          "  - ports: [{protocol: SCTP, port: 80}]")
    answer = agent.apply([{"path": "m.yaml", "text": MANIFEST + "---\n" + sctp}])
    assert answer["warnings"] == [
        "networkpolicy shop/deny-all: SCTP is not supported by this kernel (CONFIG_IP_SCTP unset); "
        "the policy still isolates its pods, and its SCTP ports can never match"]
    assert "networkpolicy.networking.k8s.io/deny-all created" in answer["results"]


def test_a_bad_status_report_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    """Test that a kubelet report with a podIP that is no IP is one clear error, stores nothing, and
    neither the next reconcile nor the next start trips over it."""
    agent, _ = make_agent(tmp_path)
    apply(agent, MANIFEST)
    before = agent.store.get("pods", "shop", "web")
    with pytest.raises(InvalidManifest, match=r"pod status report for shop/web: podIP: .*not-an-ip"):
        agent.report_pod("shop", "web", {"phase": "Running", "podIP": "not-an-ip"})
    with pytest.raises(InvalidManifest, match=r"endpoint report for shop/web: ip"):
        agent.add_endpoint("shop", "web", {"ip": "10.244.0.300", "ifname": "vv00000001", "ifindex": 7})
    assert agent.store.get("pods", "shop", "web") == before
    reconcile_all(agent)
    agent.store.close()
    restarted, _ = make_agent(tmp_path)
    assert restarted.store.get("pods", "shop", "web") == before


def test_a_torn_endpoint_state_file_is_set_aside_and_the_agent_starts(tmp_path: Path) -> None:
    """Test that an endpoints.json cut short by a crash does not stop the next start: it is moved
    aside, and the node runtime's next report wires the pod again."""
    agent, dp = make_agent(tmp_path)
    apply(agent, MANIFEST)
    run_pod(agent)
    agent.store.close()
    state = tmp_path / "endpoints.json"
    torn = state.read_bytes()[:20]
    state.write_bytes(torn)
    restarted, _ = make_agent(tmp_path, dp)
    assert list(restarted.endpoints) == []
    assert (tmp_path / "endpoints.json.unreadable").read_bytes() == torn
    run_pod(restarted)
    assert [r.key for r in restarted.endpoints] == ["shop/web"]
    assert stat.S_IMODE((tmp_path / "endpoints.json").stat().st_mode) == 0o600


def test_without_kube_proxy_replacement_services_are_left_to_kube_proxy(tmp_path: Path) -> None:
    """Test that an agent started with --kube-proxy-replacement false empties the load-balancing maps a
    previous life left, programs no service, and says so in its status, while policy still runs."""
    agent, dp = make_agent(tmp_path)
    agent.apply([{"path": "m.yaml", "text": MANIFEST}])
    reconcile_all(agent)
    assert dp.tables["lb4_services"]
    agent.close()

    config = replace(agent.config, kube_proxy_replacement=False)
    again = Agent(config, dp)
    again.start()
    again.apply([{"path": "more.yaml", "text": MANIFEST.replace("name: web", "name: web2")}])
    reconcile_all(again)
    assert not any(dp.read(table.value) for table in LbMap)
    assert queries.status(again)["agent"]["kube_proxy_replacement"] is False
    assert again.policy.compiled is not None


def test_a_single_node_agent_never_imports_netlink(tmp_path: Path) -> None:
    """Test that an agent that routes to no other node and wires no pod leaves pyroute2 (9 MB) unimported."""
    code = ("import sys; from pathlib import Path; from velvet.agent.daemon import build_agent; "
            "from velvet.agent.config import AgentConfig; "
            f"agent = build_agent(AgentConfig(sandbox='t', state_dir=Path({str(tmp_path)!r})), True); "
            "agent.start(); agent.apply([{'path': 'a.yaml', 'text': 'kind: Namespace\\napiVersion: v1\\n"
            "metadata: {name: a}\\n'}]); agent.close(); print('pyroute2' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
