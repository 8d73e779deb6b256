"""The lease a killed predecessor left, renewed from the agent process's first moment.

Started before the API server and the agent are imported (aiohttp alone takes 0.2 s of a quiet start,
seconds on a busy node), so that the predecessor's lease outlives the whole start: the node and the
endpoints attached to it stay in the other nodes' views (`velvet.sources.etcd_nodes`).
"""

from __future__ import annotations

from velvet.agent.config import AgentConfig
from velvet.sources.etcd_client import EtcdClient
from velvet.sources.etcd_nodes import NODE_LEASE_FILE, PredecessorLease


def renew_predecessors_lease(config: AgentConfig) -> PredecessorLease | None:
    """A node registered in etcd: its predecessor's lease, renewed from now on (None: not such a node)."""
    if config.store != "etcd" or not config.node_ips:
        return None
    lease = PredecessorLease(EtcdClient(config.etcd_endpoint), config.resolved_state_dir / NODE_LEASE_FILE)
    lease.start()
    return lease
