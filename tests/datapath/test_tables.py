"""Test that the control plane's records survive the agent's codecs and the kernel maps both ways.

A restarted agent adopts the pinned maps by reading them back into records (`TableMaps.read`) and
writes only the difference, so every table must read back exactly what was written.
"""

from __future__ import annotations

from typing import Any

import pytest
from fixtures_datapath import Loaded, lxc

from velvet.datapath.structs import LB_MAGLEV_LUT_SIZE, BackendState, LbScope, SvcFlag
from velvet.datapath.tables import (
    EP_POLICY_AUDIT,
    EP_POLICY_INGRESS,
    BackendValue,
    Direction,
    EndpointEntry,
    PolicyKey,
    PolicyValue,
    RevNatValue,
    ServiceKey,
    ServiceValue,
    SourceRangeKey,
)

pytestmark = [pytest.mark.privileged]
__all__ = ["lxc"]  # the fixture, imported for pytest

RECORDS: dict[str, dict[Any, Any]] = {
    "lb4_services": {
        ServiceKey("10.96.0.10", 80, 0, 6, LbScope.INT): ServiceValue(
            affinity_timeout=30, count=1, rev_nat_index=5,
            flags=SvcFlag.NODEPORT | SvcFlag.TWO_SCOPES | SvcFlag.AFFINITY),
        ServiceKey("10.96.0.10", 80, 1, 6, LbScope.INT): ServiceValue(backend_id=7, rev_nat_index=5),
        ServiceKey("0.0.0.0", 30080, 0, 17): ServiceValue(count=0, rev_nat_index=6, flags=SvcFlag.NODEPORT),
    },
    "lb4_backends": {7: BackendValue("10.244.0.20", 8080, 6, BackendState.TERMINATING),
                     2**32 - 1: BackendValue("10.244.1.2", 53, 17)},
    "lb4_revnat": {5: RevNatValue("10.96.0.10", 80), 65535: RevNatValue("0.0.0.0", 30080)},
    "lb4_src_range": {SourceRangeKey(5, "198.51.100.0/24"): None, SourceRangeKey(5, "0.0.0.0/0"): None},
    "lb4_maglev": {5: tuple(i % 3 + 1 for i in range(LB_MAGLEV_LUT_SIZE))},
    "lxc_endpoints": {"10.244.0.20": EndpointEntry(3, 256, 20, EP_POLICY_INGRESS | EP_POLICY_AUDIT,
                                                   "0a:58:0a:f4:00:14", "6e:1d:2a:3b:4c:5d")},
    "ipcache": {"10.244.0.20/32": 256, "172.18.0.2/32": 1},
    "ipcache_cidr": {"0.0.0.0/0": 2, "10.0.0.0/8": 16777217},
    "policy": {
        PolicyKey(20, Direction.INGRESS, 256, 6, 8080, 13): PolicyValue(4),
        PolicyKey(20, Direction.INGRESS, 256, 17, 53, 16): PolicyValue(5),
        PolicyKey(20, Direction.INGRESS, 0, 1, 0, 0): PolicyValue(6),
        PolicyKey(20, Direction.EGRESS, 16777217, 0, 0, 0): PolicyValue(7),
    },
}


@pytest.mark.parametrize("table", sorted(RECORDS))
def test_table_reads_back_what_was_written_and_deletes_by_record(lxc: Loaded, table: str) -> None:
    """Test that records written through TableMaps read back equal, and deleting them empties the map."""
    lxc.tables.write(table, RECORDS[table], ())
    assert lxc.tables.read(table) == RECORDS[table]
    lxc.tables.write(table, {}, list(RECORDS[table]))
    assert lxc.tables.read(table) == {}
