"""Test the per-namespace policy audit switch: the namespace annotation velvet.io/policy-audit-mode."""

from __future__ import annotations

from pathlib import Path

from test_agent import MANIFEST, POLICY, apply, make_agent, run_pod

from velvet.agent import queries
from velvet.controllers.policy import POLICY_AUDIT_ANNOTATION
from velvet.datapath.tables import EP_POLICY_AUDIT, EP_POLICY_INGRESS

AUDITED = f"""
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  annotations: {{{POLICY_AUDIT_ANNOTATION}: "true"}}
"""


def test_annotated_namespace_puts_its_endpoints_in_audit_mode(tmp_path: Path) -> None:
    """Test that the annotation sets the audit flag on the namespace's isolated endpoint, and that
    removing it enforces again; endpoint list says which."""
    agent, dp = make_agent(tmp_path)
    apply(agent, MANIFEST + "---" + POLICY)
    run_pod(agent)
    apply(agent, AUDITED)
    entry = dp.tables["lxc_endpoints"]["10.244.0.10"]
    assert entry.flags & EP_POLICY_INGRESS
    assert entry.flags & EP_POLICY_AUDIT
    assert queries.query(agent, "endpoints", {})[0]["ingress_enforcement"] == "audit"
    apply(agent, MANIFEST)
    assert not dp.tables["lxc_endpoints"]["10.244.0.10"].flags & EP_POLICY_AUDIT
    assert queries.query(agent, "endpoints", {})[0]["ingress_enforcement"] == "enabled"


def test_other_namespaces_are_not_audited(tmp_path: Path) -> None:
    """Test that another namespace's annotation leaves this namespace's endpoints enforcing."""
    agent, dp = make_agent(tmp_path)
    apply(agent, MANIFEST + "---" + POLICY)
    run_pod(agent)
    apply(agent, AUDITED.replace("name: shop", "name: elsewhere"))
    assert not dp.tables["lxc_endpoints"]["10.244.0.10"].flags & EP_POLICY_AUDIT
