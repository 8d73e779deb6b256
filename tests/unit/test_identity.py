"""Tests of identity labels and the identity allocator."""

from __future__ import annotations

import json

import pytest

from velvet.control.identity import FIRST_LOCAL_CIDR_IDENTITY, IdentityAllocator
from velvet.control.labels import (
    DEFAULT_EXCLUDED_LABELS,
    LabelFilter,
    endpoint_labels,
    namespace_labels_of,
    namespace_of,
    pod_labels_of,
)
from velvet.errors import VelvetError
from velvet.model import FIRST_ALLOCATED_IDENTITY, ReservedIdentity

NS_LABELS = {"kubernetes.io/metadata.name": "shop", "team": "red"}


def _labels(app: str, **extra: str) -> dict[str, str]:
    """Identity labels of a pod with app=<app> (plus `extra`) in namespace shop."""
    return dict(endpoint_labels({"app": app, **extra}, "shop", NS_LABELS))


# --- labels ------------------------------------------------------------------------------------

def test_endpoint_labels_prefix_pod_and_namespace_labels() -> None:
    """Test that pod labels, namespace labels and the namespace name get distinct k8s: keys."""
    labels = endpoint_labels({"app": "web", "team": "blue"}, "shop", NS_LABELS)
    assert dict(labels) == {
        "k8s:app": "web",
        "k8s:team": "blue",
        "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name": "shop",
        "k8s:io.cilium.k8s.namespace.labels.team": "red",
        "k8s:io.kubernetes.pod.namespace": "shop",
    }
    assert list(labels) == sorted(labels)


def test_labels_are_recovered_from_an_identity() -> None:
    """Test that pod labels, namespace labels and namespace come back out of identity labels."""
    labels = endpoint_labels({"app": "web", "team": "blue"}, "shop", NS_LABELS)
    assert pod_labels_of(labels) == {"app": "web", "team": "blue"}
    assert namespace_labels_of(labels) == NS_LABELS
    assert namespace_of(labels) == "shop"
    assert namespace_of({"reserved:host": ""}) is None


@pytest.mark.parametrize(
    "key",
    [
        "pod-template-hash", "controller-revision-hash", "pod-template-generation", "controller-uid",
        "job-name",
        "batch.kubernetes.io/job-name", "batch.kubernetes.io/controller-uid",
        "statefulset.kubernetes.io/pod-name", "apps.kubernetes.io/pod-index", "annotation.foo",
    ],
)
def test_default_filter_drops_cardinality_labels(key: str) -> None:
    """Test that labels which only add cardinality are left out of identities by default."""
    assert "k8s:" + key not in endpoint_labels({"app": "web", key: "x1"}, "shop", NS_LABELS)


def test_filter_keeps_other_labels_and_cannot_be_used_to_spoof_a_namespace() -> None:
    """Test that ordinary labels stay and pod labels using the namespace keys are dropped."""
    labels = endpoint_labels(
        {"app.kubernetes.io/name": "web", "io.kubernetes.pod.namespace": "kube-system",
         "io.cilium.k8s.namespace.labels.team": "blue", "pod-template-hashy": "1"},
        "shop", NS_LABELS,
    )
    assert labels["k8s:app.kubernetes.io/name"] == "web"
    assert labels["k8s:pod-template-hashy"] == "1"  # whole-key match only
    assert namespace_of(labels) == "shop"
    assert namespace_labels_of(labels)["team"] == "red"


def test_custom_exclusion_list() -> None:
    """Test that the exclusion list is configurable and an empty list keeps every label."""
    keep_all = LabelFilter(())
    assert "k8s:pod-template-hash" in endpoint_labels({"pod-template-hash": "1"}, "shop", {}, keep_all)
    no_version = LabelFilter((*DEFAULT_EXCLUDED_LABELS, r"version"))
    assert "k8s:version" not in endpoint_labels({"version": "v2"}, "shop", {}, no_version)


# --- allocator ---------------------------------------------------------------------------------

def test_reserved_identities_are_always_present() -> None:
    """Test the reserved identities and their reserved: labels."""
    allocator = IdentityAllocator()
    host = allocator.lookup(ReservedIdentity.HOST)
    assert host is not None
    assert dict(host.labels) == {"reserved:host": ""}
    remote = allocator.lookup(ReservedIdentity.REMOTE_NODE)
    assert remote is not None
    assert dict(remote.labels) == {"reserved:remote-node": ""}
    assert [i.id for i in allocator.all()] == [1, 2, 3, 4, 5, 6]
    assert allocator.lookup(0) is None


def test_same_labels_same_identity_refcounted() -> None:
    """Test that a label set keeps its number while referenced, in any label order."""
    allocator = IdentityAllocator()
    first = allocator.acquire(_labels("web"))
    again = allocator.acquire(dict(reversed(list(_labels("web").items()))))
    assert first.id == again.id == FIRST_ALLOCATED_IDENTITY
    assert allocator.release(_labels("web")) is False
    assert allocator.lookup(first.id) == first
    assert allocator.release(_labels("web")) is True
    assert allocator.lookup(first.id) is None
    assert allocator.lookup_labels(_labels("web")) is None
    with pytest.raises(KeyError):
        allocator.release(_labels("web"))


def test_lowest_free_number_is_reused_first() -> None:
    """Test deterministic allocation: ascending numbers, freed numbers reused lowest first."""
    allocator = IdentityAllocator()
    ids = [allocator.acquire(_labels(app)).id for app in "abcd"]
    assert ids == [256, 257, 258, 259]
    allocator.release(_labels("c"))
    allocator.release(_labels("b"))
    assert allocator.acquire(_labels("e")).id == 257
    assert allocator.acquire(_labels("f")).id == 258
    assert allocator.acquire(_labels("g")).id == 260


def test_excluded_labels_share_an_identity() -> None:
    """Test that two ReplicaSet generations of the same app share one identity."""
    allocator = IdentityAllocator()
    old = allocator.acquire(_labels("web", **{"pod-template-hash": "aaa"}))
    new = allocator.acquire(_labels("web", **{"pod-template-hash": "bbb"}))
    assert old.id == new.id


def test_cidr_identities() -> None:
    """Test local CIDR identities: from 1<<24, normalized, refcounted; 0.0.0.0/0 is WORLD."""
    allocator = IdentityAllocator()
    net = allocator.allocate_cidr("10.1.2.3/8")
    assert net.id == FIRST_LOCAL_CIDR_IDENTITY
    assert dict(net.labels) == {"cidr:10.0.0.0/8": ""}
    assert allocator.allocate_cidr("10.0.0.0/8").id == net.id
    assert allocator.allocate_cidr("192.168.0.0/16").id == FIRST_LOCAL_CIDR_IDENTITY + 1
    assert allocator.allocate_cidr("0.0.0.0/0").id == ReservedIdentity.WORLD
    assert allocator.release_cidr("0.0.0.0/0") is False
    assert allocator.release_cidr("10.0.0.0/8") is False
    assert allocator.release_cidr("10.0.0.0/8") is True
    assert allocator.lookup(net.id) is None
    assert allocator.allocate_cidr("172.16.0.0/12").id == FIRST_LOCAL_CIDR_IDENTITY


def test_snapshot_restore_keeps_numbers_across_order() -> None:
    """Test that a restored allocator gives the same numbers even when objects return in another order."""
    before = IdentityAllocator()
    for app in "abc":
        before.acquire(_labels(app))
    before.release(_labels("b"))
    before.allocate_cidr("10.0.0.0/8")
    data = json.loads(json.dumps(before.snapshot()))

    after = IdentityAllocator()
    after.restore(data)
    assert after.acquire(_labels("new")).id == 257  # the free gap, not a restored number
    assert after.acquire(_labels("c")).id == 258
    assert after.acquire(_labels("a")).id == 256
    assert after.allocate_cidr("10.0.0.0/8").id == FIRST_LOCAL_CIDR_IDENTITY
    assert after.forget_restored() == 0
    assert after.snapshot()["identities"] == [
        {"id": 256, "labels": _labels("a")},
        {"id": 257, "labels": _labels("new")},
        {"id": 258, "labels": _labels("c")},
    ]


def test_forget_restored_frees_unclaimed_numbers() -> None:
    """Test that restored numbers nobody acquired again are freed by forget_restored."""
    before = IdentityAllocator()
    before.acquire(_labels("a"))
    before.acquire(_labels("b"))
    after = IdentityAllocator()
    after.restore(before.snapshot())
    after.acquire(_labels("b"))
    assert after.forget_restored() == 1
    assert after.acquire(_labels("z")).id == 256


def test_restore_rejects_bad_snapshots() -> None:
    """Test that malformed or conflicting snapshots raise VelvetError and a used allocator refuses."""
    with pytest.raises(VelvetError):
        IdentityAllocator().restore({"version": 99})
    with pytest.raises(VelvetError):
        IdentityAllocator().restore({"version": 1, "identities": [{"id": "x"}], "cidr_identities": []})
    duplicate = {"version": 1, "cidr_identities": [],
                 "identities": [{"id": 300, "labels": {"a": "1"}}, {"id": 300, "labels": {"a": "2"}}]}
    with pytest.raises(VelvetError):
        IdentityAllocator().restore(duplicate)
    used = IdentityAllocator()
    used.acquire(_labels("a"))
    with pytest.raises(VelvetError):
        used.restore({"version": 1, "identities": [], "cidr_identities": []})
