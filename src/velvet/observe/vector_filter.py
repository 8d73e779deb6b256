"""Hubble filters as numpy masks over stored records, so readers build Flows only for matches.

A mask is exact, not a mere prefilter: addresses and ports are compared as integers with the
semantics of `velvet.observe.filters`; every other field is decided by that module's own predicate,
run once per distinct value of the columns it reads (an endpoint or service handle, a protocol,
a verdict, an event type and observation point) on a probe Flow carrying just that value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from ipaddress import IPv4Address, IPv4Network, ip_network
from typing import Any

import numpy as np
import numpy.typing as npt

from velvet.observe.codes import EventFlag
from velvet.observe.decode import FlowDecoder, Interner, RecordMatch, Records
from velvet.observe.filters import FilterSpec, FlowFilter, compile_filter
from velvet.observe.flow import Endpoint, Flow

Mask = npt.NDArray[np.bool_]

_NOBODY = Endpoint(0)
_REV_NAT = int(EventFlag.REV_NAT)
_SIDES = (("source", "saddr", "sport", "src_ep"), ("destination", "daddr", "dport", "dst_ep"))
_ENDPOINT_FIELDS = ("pod", "namespace", "label", "identity")


def _probe(**values: Any) -> Flow:
    """A Flow with every field zero or empty but `values`."""
    base: dict[str, Any] = {f.name: 0 for f in fields(Flow)}
    base.update(src_ip="", dst_ip="", source=_NOBODY, destination=_NOBODY, source_service=None,
                destination_service=None, policies=(), orig_dst_ip="", node_name="")
    return Flow(**{**base, **values})


class _ByValue:
    """A mask from a predicate decided once per distinct key (a small non-negative integer column)."""

    def __init__(self, decide: Callable[[int], bool], size: int = 0,
                 table: Interner[Any] | None = None) -> None:
        self._decide = decide
        self._table = table
        self._epoch = table.epoch if table else 0
        self._ok = np.zeros(size, np.bool_)
        self._known = np.zeros(size, np.bool_)

    def __call__(self, keys: npt.NDArray[Any]) -> Mask:
        if self._table is not None:
            if self._table.epoch != self._epoch:  # handles were renumbered
                self._epoch, self._ok, self._known = self._table.epoch, self._ok[:0], self._known[:0]
            if len(self._ok) < len(self._table.values):
                grow = np.zeros(len(self._table.values) - len(self._ok), np.bool_)
                self._ok, self._known = np.concatenate((self._ok, grow)), np.concatenate((self._known, grow))
        unknown = ~self._known[keys]
        if unknown.any():
            for key in np.unique(keys[unknown]).tolist():
                self._ok[key], self._known[key] = self._decide(key), True
        ok: Mask = self._ok[keys]
        return ok


def _ip_mask(values: tuple[str, ...], column: str) -> RecordMatch:
    exact = np.array([int(IPv4Address(v)) for v in values if "/" not in v], np.uint32)
    networks = [ip_network(v, strict=False) for v in values if "/" in v]
    nets = [(np.uint32(int(n.netmask)), np.uint32(int(n.network_address)))
            for n in networks if isinstance(n, IPv4Network)]

    def mask(records: Records) -> Mask:
        addr = records[column]
        hit: Mask = np.isin(addr, exact)
        for netmask, network in nets:
            hit |= (addr & netmask) == network
        found: Mask = hit & (addr != 0)  # no address reads as "" and matches nothing
        return found
    return mask


def _port_mask(values: tuple[str, ...], column: str) -> RecordMatch:
    ports = np.array([int(v) for v in values], np.uint16)

    def mask(records: Records) -> Mask:
        hit: Mask = np.isin(records[column], ports)
        return hit
    return mask


def _endpoint_mask(f: FlowFilter, decoder: FlowDecoder, column: str) -> RecordMatch:
    decide = compile_filter(f)
    table = decoder.endpoints
    by_handle = _ByValue(lambda h: decide(_probe(source=table.values[h], destination=table.values[h])),
                         table=table)
    return lambda records: by_handle(records[column])


def _service_mask(f: FlowFilter, decoder: FlowDecoder, reverse: bool) -> RecordMatch:
    """Flows whose service matches, on the side `f` names: a reverse-NATed flow's service is its source's."""
    decide = compile_filter(f)
    table = decoder.services
    by_handle = _ByValue(lambda h: decide(_probe(source_service=table.values[h],
                                                 destination_service=table.values[h])), table=table)

    def mask(records: Records) -> Mask:
        sided: Mask = ((records["flags"] & _REV_NAT) != 0) == reverse
        return by_handle(records["service"]) & sided
    return mask


def _code_mask(f: FlowFilter, column: str) -> RecordMatch:
    decide = compile_filter(f)
    by_code = _ByValue(lambda code: decide(_probe(**{column: code})), size=256)
    return lambda records: by_code(records[column])


def _type_mask(f: FlowFilter) -> RecordMatch:
    decide = compile_filter(f)
    by_key = _ByValue(lambda key: decide(_probe(type=key >> 8, obs_point=key & 255)), size=1 << 16)
    return lambda records: by_key((records["type"].astype(np.uint16) << 8) | records["obs_point"])


def _field_masks(f: FlowFilter, decoder: FlowDecoder) -> list[RecordMatch]:
    """One mask per non-empty field group of `f`; the filter matches where all of them do."""
    masks: list[RecordMatch] = []
    for side, addr, port, handle in _SIDES:
        if values := getattr(f, f"{side}_ip"):
            masks.append(_ip_mask(values, addr))
        if values := getattr(f, f"{side}_port"):
            masks.append(_port_mask(values, port))
        endpoint = FlowFilter(**{f"{side}_{name}": getattr(f, f"{side}_{name}") for name in _ENDPOINT_FIELDS})
        if endpoint != FlowFilter():
            masks.append(_endpoint_mask(endpoint, decoder, handle))
        if values := getattr(f, f"{side}_service"):
            masks.append(_service_mask(FlowFilter(**{f"{side}_service": values}), decoder, side == "source"))
    if f.protocol:
        masks.append(_code_mask(FlowFilter(protocol=f.protocol), "proto"))
    if f.verdict:
        masks.append(_code_mask(FlowFilter(verdict=f.verdict), "verdict"))
    if f.event_type:
        masks.append(_type_mask(FlowFilter(event_type=f.event_type)))
    if f.node_name:  # every record of a store is its node's: the answer is the same for all
        same = compile_filter(FlowFilter(node_name=f.node_name))(_probe(node_name=decoder.node_name))
        masks.append(lambda records: np.full(len(records), same, np.bool_))
    return masks


def _filter_match(f: FlowFilter, decoder: FlowDecoder) -> RecordMatch:
    masks = _field_masks(f, decoder)

    def match(records: Records) -> Mask:
        out = np.ones(len(records), np.bool_)
        for mask in masks:
            out &= mask(records)
        return out
    return match


def spec_match(spec: FilterSpec, decoder: FlowDecoder) -> RecordMatch | None:
    """The records `compile_spec(spec)` accepts, as a mask (None when the spec accepts everything)."""
    if not spec.allow and not spec.deny:
        return None
    allow = [_filter_match(f, decoder) for f in spec.allow]
    deny = [_filter_match(f, decoder) for f in spec.deny]

    def match(records: Records) -> Mask:
        out = np.zeros(len(records), np.bool_) if allow else np.ones(len(records), np.bool_)
        for m in allow:
            out |= m(records)
        for m in deny:
            out &= ~m(records)
        return out
    return match


def types_match(types: frozenset[int]) -> RecordMatch | None:
    """The records of the given event types (None when every type is wanted)."""
    if not types:
        return None
    wanted = np.array(sorted(types), np.uint8)
    return lambda records: np.isin(records["type"], wanted)

