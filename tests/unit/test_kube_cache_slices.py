"""The Kubernetes source's cache answers `slices_of` from an index that follows slices as they change."""

from __future__ import annotations

from typing import Any

from velvet.sources.kube_cache import KubeCache
from velvet.sources.kube_informer import Change


def endpoint_slice(name: str, service: str, version: int) -> dict[str, Any]:
    """An EndpointSlice as the API returns it, owned by `service` in namespace shop."""
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": name, "namespace": "shop", "uid": f"uid-{name}",
                         "resourceVersion": str(version),
                         "labels": {"kubernetes.io/service-name": service}},
            "endpoints": [{"addresses": ["10.244.0.10"], "conditions": {"ready": True}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}


def names(cache: KubeCache, service: str) -> list[str]:
    return [eps.metadata.name for eps in cache.slices_of("shop", service)]


def test_slices_of_follows_slices_added_moved_and_deleted() -> None:
    """Test that a service's slices are found by its label, follow a slice relabelled to another service,
    and leave with a deleted slice."""
    cache = KubeCache()
    cache.put([Change("EndpointSlice", "upsert", "shop/web-a", endpoint_slice("web-a", "web", 1)),
               Change("EndpointSlice", "upsert", "shop/web-b", endpoint_slice("web-b", "web", 2)),
               Change("EndpointSlice", "upsert", "shop/db-a", endpoint_slice("db-a", "db", 3))])
    cache.refresh()
    assert names(cache, "web") == ["web-a", "web-b"]
    assert names(cache, "db") == ["db-a"]

    cache.put([Change("EndpointSlice", "upsert", "shop/web-b", endpoint_slice("web-b", "db", 4)),
               Change("EndpointSlice", "delete", "shop/web-a", None)])
    cache.refresh()
    assert names(cache, "web") == []
    assert names(cache, "db") == ["db-a", "web-b"]
    assert cache.slices_of("other", "db") == []
