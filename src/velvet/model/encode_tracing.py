"""VelvetTracingPolicy(Namespaced) back to the JSON `velvet get -o json` prints (Tetragon's field names)."""

from __future__ import annotations

from velvet.model.encode import Json, encode_meta, encode_selector
from velvet.model.tracing import (
    Tracepoint,
    TracingSelector,
    VelvetTracingPolicy,
    VelvetTracingPolicyNamespaced,
)


def encode_tracing_policy(policy: VelvetTracingPolicy | VelvetTracingPolicyNamespaced) -> Json:
    """Either kind, as applied."""
    spec: Json = {"tracepoints": [_encode_tracepoint(t) for t in policy.spec.tracepoints]}
    if policy.spec.pod_selector is not None:
        spec["podSelector"] = encode_selector(policy.spec.pod_selector)
    return {"apiVersion": "velvet.io/v1alpha1", "kind": type(policy).__name__,
            "metadata": encode_meta(policy.metadata), "spec": spec}


def _encode_tracepoint(tp: Tracepoint) -> Json:
    out: Json = {"subsystem": tp.subsystem, "event": tp.event}
    if tp.args:
        out["args"] = [{"index": a.index, "type": a.type} for a in tp.args]
    if tp.selectors:
        out["selectors"] = [_encode_selector(s) for s in tp.selectors]
    return out


def _encode_selector(s: TracingSelector) -> Json:
    out: Json = {}
    if s.match_binaries:
        out["matchBinaries"] = [{"operator": b.operator, "values": list(b.values)} for b in s.match_binaries]
    if s.match_args:
        out["matchArgs"] = [{"index": a.index, "operator": a.operator, "values": list(a.values)}
                            for a in s.match_args]
    if s.match_pids:
        out["matchPIDs"] = [{"operator": p.operator, "values": list(p.values), "followForks": p.follow_forks,
                             "isNamespacePID": p.is_namespace_pid} for p in s.match_pids]
    if s.match_actions:
        out["matchActions"] = [{"action": a.action, **({"argSig": a.arg_sig} if a.action == "Signal" else {})}
                               for a in s.match_actions]
    return out
