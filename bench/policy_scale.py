"""Policy compile scale: CPU time of the policy compiler with many ipBlocks and with many namespaces.

Two series, each point measured in one process with `time.process_time`:
- ipBlocks: one policy whose ingress and egress rules hold N ipBlock peers (/32, /24, and /16 with an
  except, in turn) over 50 pods; sync + compile, then the same after one pod is added (what every later
  pod change costs the agent).
- namespaces: N namespaces with one pod and one policy each (peers: its own pods, and namespaces by label).

    .venv/bin/python -m bench.policy_scale [--blocks 1000,2000,5000,10000] [--namespaces 2000,4000,8000,16000]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import replace

from velvet.control.identity import IdentityAllocator
from velvet.control.policy import PolicyCompiler
from velvet.model import Namespace, NetworkPolicy, Pod, PodStatus
from velvet.model.codec import parse_documents


def _objects(text: str) -> list[object]:
    """Objects of YAML text, validated as `velvet apply` does."""
    return list(parse_documents(text, "<bench>"))


def _running(pod: Pod, ip: str) -> Pod:
    """The pod as the kubelet reports it running with `ip`."""
    return replace(pod, status=PodStatus(phase="Running", pod_ip=ip))


def _pods(namespaces: list[str], count: int) -> list[Pod]:
    text = "".join(f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, "
                   f"namespace: {namespaces[i % len(namespaces)]}, labels: {{app: x{i % 5}}}}}\n"
                   f"spec:\n  containers: [{{name: c, command: [sleep], "
                   f"ports: [{{name: http, containerPort: 80}}]}}]\n" for i in range(count))
    pods = [o for o in _objects(text) if isinstance(o, Pod)]
    return [_running(p, f"10.0.{i // 200}.{i % 200 + 1}") for i, p in enumerate(pods)]


def _namespaces(names: list[str]) -> list[Namespace]:
    text = "".join(f"---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {n}, labels: {{team: {n}}}}}\n"
                   for n in names)
    return [o for o in _objects(text) if isinstance(o, Namespace)]


def _block_policy(blocks: int) -> NetworkPolicy:
    rng = random.Random(1)
    peers = []
    for i in range(blocks):
        a, b, c = rng.randrange(256), rng.randrange(256), rng.randrange(256)
        peers.append((f"{a}.{b}.{c}.{rng.randrange(256)}/32", f"{a}.{b}.{c}.0/24",
                      f"{a}.{b}.0.0/16\n        except: [{a}.{b}.{c}.0/24]")[i % 3])
    listed = "".join(f"    - ipBlock:\n        cidr: {p}\n" for p in peers)
    text = (f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
            f"metadata: {{name: blocks, namespace: a}}\nspec:\n  podSelector: {{matchLabels: {{app: x0}}}}\n"
            f"  policyTypes: [Ingress, Egress]\n"
            f"  ingress:\n  - ports: [{{port: 443}}]\n    from:\n{listed}"
            f"  egress:\n  - ports: [{{port: 443}}]\n    to:\n{listed}")
    (policy,) = [o for o in _objects(text) if isinstance(o, NetworkPolicy)]
    return policy


def _namespace_policies(names: list[str]) -> list[NetworkPolicy]:
    """One policy per namespace admitting its own namespace's pods and one team's namespaces' pods:
    the compiled output grows with N (a selector matching every namespace would make it N squared)."""
    text = "".join(f"---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
                   f"metadata: {{name: p, namespace: {n}}}\nspec:\n  podSelector: {{}}\n  ingress:\n"
                   f"  - from:\n    - podSelector: {{}}\n    - namespaceSelector: "
                   f"{{matchLabels: {{team: {n}}}}}\n" for n in names)
    return [o for o in _objects(text) if isinstance(o, NetworkPolicy)]


def measure(namespaces: list[Namespace], pods: list[Pod], policies: list[NetworkPolicy]) -> dict[str, float]:
    """CPU seconds of sync + compile, then of the same after one more pod."""
    compiler = PolicyCompiler(IdentityAllocator())
    endpoints = {p.metadata.key: i + 1 for i, p in enumerate(pods)}
    started = time.process_time()
    compiler.sync(namespaces, pods, policies)
    compiler.compile(endpoints)
    first = time.process_time() - started
    extra = _pods([namespaces[-1].metadata.name], 1)[0]
    more = [*pods, _running(extra, "10.0.250.250")]
    started = time.process_time()
    compiler.sync(namespaces, more, policies)
    compiler.compile({**endpoints, extra.metadata.key: len(more)})
    return {"compile_s": round(first, 3), "pod_change_s": round(time.process_time() - started, 3)}


def main() -> None:
    """Print one JSON line per point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", default="1000,2000,5000,10000")
    parser.add_argument("--namespaces", default="2000,4000,8000,16000")
    args = parser.parse_args()
    for blocks in map(int, args.blocks.split(",")):
        names = ["a", "b"]
        point = measure(_namespaces(names), _pods(names, 50), [_block_policy(blocks)])
        print(json.dumps({"series": "ipblocks", "n": blocks, **point}), flush=True)
    for count in map(int, args.namespaces.split(",")):
        names = [f"ns{i}" for i in range(count)]
        point = measure(_namespaces(names), _pods(names, count), _namespace_policies(names))
        print(json.dumps({"series": "namespaces", "n": count, **point}), flush=True)


if __name__ == "__main__":
    main()
