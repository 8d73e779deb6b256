"""Test that the kubelet's pod status and the CNI's endpoint reports are validated like manifests.

A `podIP: not-an-ip` was once stored and broke every later policy reconcile and the next start.
"""

from __future__ import annotations

from typing import Any

import pytest

from velvet.errors import InvalidManifest, InvalidReport
from velvet.model import EndpointReport, PodCondition, PodStatus
from velvet.model.decode_report import decode_endpoint_report, decode_pod_status_report

WHERE = "pod status report for blue/echo-1"
STATUS: dict[str, Any] = {
    "phase": "Running", "podIP": "10.244.0.5", "hostIP": "192.168.0.2",
    "conditions": [{"type": t, "status": "True"} for t in ("Initialized", "Ready", "ContainersReady",
                                                            "PodScheduled")],
    "startTime": "2024-05-01T12:00:00Z",
}
ENDPOINT: dict[str, Any] = {"ip": "10.244.0.5", "ifname": "lxc1a2b3c4d", "ifindex": 7,
                            "netns_inode": 4026532300, "cgroup_id": 2**64 - 1}


def test_a_kubelet_status_report_decodes() -> None:
    status = decode_pod_status_report(STATUS, WHERE)
    assert status == PodStatus(
        phase="Running", pod_ip="10.244.0.5", host_ip="192.168.0.2",
        conditions=(PodCondition("Initialized", "True"), PodCondition("Ready", "True"),
                    PodCondition("ContainersReady", "True"), PodCondition("PodScheduled", "True")),
        start_time="2024-05-01T12:00:00Z",
    )
    assert status.ready


def test_a_pending_pod_may_report_no_ip_yet() -> None:
    status = decode_pod_status_report({"phase": "Pending", "podIP": "", "conditions": []}, WHERE)
    assert (status.pod_ip, status.host_ip, status.start_time) == (None, None, None)


@pytest.mark.parametrize(("change", "field", "reason"), [
    ({"podIP": "not-an-ip"}, "podIP", "must be a valid IPv4 address"),
    ({"podIP": "10.244.0.5\n"}, "podIP", "must be a valid IPv4 address"),
    ({"podIP": "fe80::1"}, "podIP", "IPv4"),
    ({"hostIP": 3232235522}, "hostIP", "must be a string"),
    ({"phase": "Sleeping"}, "phase", 'Unsupported value: "Sleeping"'),
    ({"phase": None}, "phase", "Required value"),
    ({"conditions": [{"type": "Ready", "status": "Yes"}]}, "conditions[0].status", "Unsupported value"),
    ({"conditions": [{"type": "Not Ready", "status": "True"}]}, "conditions[0].type", "name part"),
    ({"conditions": [{"type": "Ready", "status": "True"}, {"type": "Ready", "status": "False"}]},
     "conditions[1].type", 'Duplicate value: "Ready"'),
    ({"conditions": {"Ready": "True"}}, "conditions", "must be a list"),
    ({"startTime": "yesterday"}, "startTime", "RFC 3339"),
    ({"startTime": "2024-02-30T00:00:00Z"}, "startTime", "RFC 3339"),
    ({"podIPs": [{"ip": "10.244.0.5"}]}, "podIPs", 'unknown field "podIPs"'),
])
def test_a_bad_status_report_is_refused_in_one_line(change: dict[str, Any], field: str, reason: str) -> None:
    report = {**STATUS, **change}
    if change.get("phase", "") is None:
        del report["phase"]
    with pytest.raises(InvalidReport) as caught:
        decode_pod_status_report(report, WHERE)
    err = caught.value
    assert err.field == field
    assert reason in err.reason
    assert str(err) == f"{WHERE}: {field}: {err.reason}"
    assert "\n" not in str(err)


def test_a_report_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(InvalidReport) as caught:
        decode_pod_status_report(["Running"], WHERE)
    assert str(caught.value) == f"{WHERE}: <document>: must be an object, not list"


def test_report_errors_are_answered_like_manifest_errors() -> None:
    """The API answers InvalidManifest with 400; a bad report is the caller's fault the same way."""
    with pytest.raises(InvalidManifest):
        decode_endpoint_report({}, "endpoint report for blue/echo-1")


def test_a_cni_endpoint_report_decodes() -> None:
    assert decode_endpoint_report(ENDPOINT, "ep") == EndpointReport(
        ip="10.244.0.5", ifname="lxc1a2b3c4d", ifindex=7, netns_inode=4026532300, cgroup_id=2**64 - 1)
    minimal = decode_endpoint_report({"ip": "10.244.0.9", "ifname": "veth0", "ifindex": 1}, "ep")
    assert (minimal.netns_inode, minimal.cgroup_id, minimal.mac, minimal.host_mac) == (0, 0, "", "")
    macs = decode_endpoint_report({**ENDPOINT, "mac": "0A:58:0A:F4:00:05", "host_mac": "6e:1d:2a:3b:4c:5d"},
                                  "ep")
    assert (macs.mac, macs.host_mac) == ("0a:58:0a:f4:00:05", "6e:1d:2a:3b:4c:5d")


@pytest.mark.parametrize(("change", "field", "reason"), [
    ({"ip": "10.244.0.256"}, "ip", "IPv4"),
    ({"ip": None}, "ip", "Required value"),
    ({"ifname": "a" * 16}, "ifname", "1 to 15 bytes"),
    ({"ifname": ""}, "ifname", "1 to 15 bytes"),
    ({"ifname": "lxc/1"}, "ifname", "without '/'"),
    ({"ifname": "lxc 1"}, "ifname", "whitespace"),
    ({"ifname": "lxc:1"}, "ifname", "':'"),
    ({"ifname": ".."}, "ifname", "'..'"),
    ({"ifname": "lxc\x001"}, "ifname", "NUL"),
    ({"ifindex": 0}, "ifindex", "between 1 and 2147483647"),
    ({"ifindex": 2**31}, "ifindex", "between 1 and 2147483647"),
    ({"ifindex": True}, "ifindex", "must be an integer, not boolean"),
    ({"ifindex": "7"}, "ifindex", "must be an integer, not string"),
    ({"netns_inode": -1}, "netns_inode", "between 0 and 4294967295"),
    ({"netns_inode": 2**32}, "netns_inode", "between 0 and 4294967295"),
    ({"cgroup_id": 2**64}, "cgroup_id", "between 0 and 18446744073709551615"),
    ({"cgroup_id": 1.5}, "cgroup_id", "must be an integer, not number"),
    ({"mac": "aa:bb"}, "mac", "six hex pairs"),
    ({"mac": "0a-58-0a-f4-00-05"}, "mac", "six hex pairs"),
    ({"host_mac": "01:00:5e:00:00:01"}, "host_mac", "unicast"),
    ({"host_mac": "00:00:00:00:00:00"}, "host_mac", "unicast"),
    ({"mac": 5}, "mac", "must be a string"),
    ({"hw": "0a:58:0a:f4:00:05"}, "hw", 'unknown field "hw"'),
])
def test_a_bad_endpoint_report_is_refused_in_one_line(change: dict[str, Any], field: str,
                                                      reason: str) -> None:
    report = {key: value for key, value in {**ENDPOINT, **change}.items() if value is not None}
    where = "endpoint report for blue/echo-1"
    with pytest.raises(InvalidReport) as caught:
        decode_endpoint_report(report, where)
    err = caught.value
    assert err.field == field
    assert reason in err.reason
    assert str(err).startswith(f"{where}: {field}: ")
    assert "\n" not in str(err)
