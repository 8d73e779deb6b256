"""Strict decoding of metadata, label selectors and Namespaces, with the API server's defaults."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from types import MappingProxyType

from velvet.model.meta import EMPTY, LabelSelector, LabelSelectorRequirement, ObjectMeta
from velvet.model.namespace import NAME_LABEL, Namespace
from velvet.model.validate import (
    Node,
    Obj,
    check_annotations,
    check_dns1123_label,
    check_label_value,
    check_labels,
    check_qualified_name,
    check_resource_version,
    quote,
)

# Server-set metadata that `kubectl get -o yaml | kubectl apply -f -` sends back; ignored on input.
SERVER_METADATA = ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp",
                   "deletionGracePeriodSeconds", "generation", "managedFields", "selfLink",
                   "ownerReferences", "finalizers")
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
_USER_METADATA = frozenset(("name", "namespace", "labels", "annotations", "generateName"))
_STORED_METADATA = _USER_METADATA | frozenset(SERVER_METADATA)  # what the store's own values carry
_IGNORED_METADATA = frozenset(SERVER_METADATA)


def decode_meta(
    node: Node, *, namespaced: bool, trusted: bool, check_name: Callable[[Node], str]
) -> ObjectMeta:
    """metadata: name (checked by `check_name`), namespace (default "default"), labels, annotations.

    `trusted` input (the store's own files) also carries uid, resourceVersion and timestamps.
    """
    fields = node.obj(known=_STORED_METADATA if trusted else _USER_METADATA,
                      ignored=() if trusted else _IGNORED_METADATA)
    generate = fields.opt("generateName")
    if generate is not None:
        generate.fail("Forbidden: generateName is not supported; set metadata.name")
    name = check_name(fields.req("name"))
    namespace = ""
    ns_node = fields.opt("namespace")
    if namespaced:
        namespace = check_dns1123_label(ns_node) if ns_node is not None and ns_node.value != "" else "default"
    labels = fields.opt("labels")
    annotations = fields.opt("annotations")
    meta = ObjectMeta(
        name=name,
        namespace=namespace,
        labels=MappingProxyType(check_labels(labels)) if labels else EMPTY,
        annotations=MappingProxyType(check_annotations(annotations)) if annotations else EMPTY,
    )
    if not trusted:
        return meta
    uid, rv = fields.opt("uid"), fields.opt("resourceVersion")
    created, deleted = fields.opt("creationTimestamp"), fields.opt("deletionTimestamp")
    return ObjectMeta(
        name=meta.name,
        namespace=meta.namespace,
        uid=uid.as_str() if uid else "",
        labels=meta.labels,
        annotations=meta.annotations,
        creation_timestamp=created.as_str() if created else "",
        deletion_timestamp=deleted.as_str() if deleted else None,
        resource_version=check_resource_version(rv) if rv else 0,
    )


def decode_selector(node: Node) -> LabelSelector:
    """A metav1.LabelSelector: matchLabels and matchExpressions with the API's operator rules."""
    fields = node.obj(known=("matchLabels", "matchExpressions"))
    labels = fields.opt("matchLabels")
    match_labels = check_labels(labels) if labels else {}
    requirements: list[LabelSelectorRequirement] = []
    exprs = fields.opt("matchExpressions")
    for expr in exprs.items() if exprs else []:
        req = expr.obj(known=("key", "operator", "values"))
        key_node = req.req("key")
        check_qualified_name(key_node, key_node.as_str())
        op_node = req.req("operator")
        operator = op_node.as_str()
        if operator not in OPERATORS:
            op_node.fail(f"Invalid value: {quote(operator)}: not a valid selector operator")
        values_node = req.opt("values")
        values = tuple(check_label_value(v, v.as_str()) for v in values_node.items()) if values_node else ()
        if operator in ("In", "NotIn") and not values:
            expr.at("values", None).fail(f"Required value: must be specified when `operator` is '{operator}'")
        if operator in ("Exists", "DoesNotExist") and values:
            expr.at("values", values).fail(f"Forbidden: may not be specified when `operator` is '{operator}'")
        requirements.append(LabelSelectorRequirement(key_node.as_str(), operator, values))
    return LabelSelector(MappingProxyType(match_labels), tuple(requirements))


def decode_namespace(root: Obj, *, trusted: bool) -> Namespace:
    """A v1 Namespace; the kubernetes.io/metadata.name label is set as the API server defaults it."""
    meta = decode_meta(root.req("metadata"), namespaced=False, trusted=trusted,
                       check_name=check_dns1123_label)
    spec = root.opt("spec")
    if spec is not None:
        spec_fields = spec.obj(known=("finalizers",))
        finalizers = spec_fields.opt("finalizers")
        if finalizers is not None:
            finalizers.as_str_list()
    phase = "Active"
    status = root.opt("status")
    if status is not None:
        status_fields = status.obj(known=("phase", "conditions"))
        phase_node = status_fields.opt("phase")
        if trusted and phase_node is not None:
            phase = phase_node.one_of(("Active", "Terminating"))
    labels = MappingProxyType({**meta.labels, NAME_LABEL: meta.name})
    return Namespace(metadata=replace(meta, labels=labels), phase=phase)
