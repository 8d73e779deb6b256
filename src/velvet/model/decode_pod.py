"""Strict decoding of v1 Pods: the fields Velvet runs, known-but-irrelevant fields accepted and ignored."""

from __future__ import annotations

from types import MappingProxyType

from velvet.model.decode_meta import decode_meta
from velvet.model.pod import Container, ContainerPort, Pod, PodCondition, PodSpec, PodStatus, Probe
from velvet.model.validate import (
    PROTOCOLS,
    Node,
    Obj,
    check_dns1123_label,
    check_dns1123_subdomain,
    check_env_var_name,
    check_int_or_port_name,
    check_ipv4,
    check_port_name,
    check_port_number,
    check_qualified_name,
    check_rfc3339,
    quote,
)

# Pod spec fields that exist in the API but change nothing for a node agent or the sandbox runtime.
IGNORED_POD_SPEC = (
    "activeDeadlineSeconds", "affinity", "automountServiceAccountToken", "dnsConfig", "dnsPolicy",
    "enableServiceLinks", "ephemeralContainers", "hostAliases", "hostIPC", "hostPID", "hostUsers",
    "hostname", "imagePullSecrets", "initContainers", "nodeSelector", "os", "overhead",
    "preemptionPolicy", "priority", "priorityClassName", "readinessGates", "resourceClaims",
    "restartPolicy", "runtimeClassName", "schedulerName", "schedulingGates", "securityContext",
    "serviceAccount", "serviceAccountName", "setHostnameAsFQDN", "shareProcessNamespace", "subdomain",
    "tolerations", "topologySpreadConstraints", "volumes",
)
IGNORED_CONTAINER = (
    "envFrom", "imagePullPolicy", "lifecycle", "livenessProbe", "resizePolicy", "resources",
    "restartPolicy", "securityContext", "startupProbe", "stdin", "stdinOnce", "terminationMessagePath",
    "terminationMessagePolicy", "tty", "volumeDevices", "volumeMounts", "workingDir",
)
POD_PHASES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")
CONDITION_STATUSES = ("True", "False", "Unknown")


def decode_pod(root: Obj, *, trusted: bool) -> Pod:
    """A v1 Pod; `status` is read only from the store's own (trusted) files and ignored otherwise."""
    meta = decode_meta(root.req("metadata"), namespaced=True, trusted=trusted,
                       check_name=check_dns1123_subdomain)
    spec = _decode_spec(root.req("spec"))
    status = PodStatus()
    status_node = root.opt("status")
    if status_node is not None and trusted:
        status = decode_pod_status(status_node)
    return Pod(metadata=meta, spec=spec, status=status)


def _decode_spec(node: Node) -> PodSpec:
    fields = node.obj(known=("containers", "nodeName", "terminationGracePeriodSeconds", "hostNetwork"),
                      ignored=IGNORED_POD_SPEC)
    containers_node = fields.req("containers")
    containers = tuple(_decode_container(c) for c in containers_node.items())
    if not containers:
        containers_node.fail("Required value: a pod needs at least one container")
    seen: set[str] = set()
    for i, container in enumerate(containers):
        if container.name in seen:
            containers_node.at(i, None).at("name", None).fail(f'Duplicate value: "{container.name}"')
        seen.add(container.name)
    node_name = fields.opt("nodeName")
    grace = fields.opt("terminationGracePeriodSeconds")
    host_network = fields.opt("hostNetwork")
    return PodSpec(
        containers=containers,
        node_name=check_dns1123_subdomain(node_name) if node_name and node_name.value != "" else "",
        termination_grace_period_seconds=grace.int_in(0, 2**63 - 1) if grace else 30,
        host_network=host_network.as_bool() if host_network else False,
    )


def _decode_container(node: Node) -> Container:
    fields = node.obj(known=("name", "image", "command", "args", "env", "ports", "readinessProbe"),
                      ignored=IGNORED_CONTAINER)
    image, command, args = fields.opt("image"), fields.opt("command"), fields.opt("args")
    env_node, ports_node, probe = fields.opt("env"), fields.opt("ports"), fields.opt("readinessProbe")
    return Container(
        name=check_dns1123_label(fields.req("name")),
        image=image.as_str() if image else "",
        command=command.as_str_list() if command else (),
        args=args.as_str_list() if args else (),
        env=MappingProxyType(_decode_env(env_node)) if env_node else MappingProxyType({}),
        ports=_decode_ports(ports_node) if ports_node else (),
        readiness_probe=_decode_probe(probe) if probe else None,
    )


def _decode_env(node: Node) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in node.items():
        fields = item.obj(known=("name", "value", "valueFrom"))
        value_from = fields.opt("valueFrom")
        if value_from is not None:
            value_from.fail("Forbidden: valueFrom is not supported; give the value")
        name_node = fields.req("name")
        if name_node.value == "":
            name_node.fail("Required value")
        name = check_env_var_name(name_node)
        value = fields.opt("value")
        env[name] = value.as_str() if value else ""
    return env


def _decode_ports(node: Node) -> tuple[ContainerPort, ...]:
    ports: list[ContainerPort] = []
    names: set[str] = set()
    for item in node.items():
        fields = item.obj(known=("containerPort", "name", "protocol"), ignored=("hostPort", "hostIP"))
        name_node, protocol = fields.opt("name"), fields.opt("protocol")
        name = check_port_name(name_node) if name_node else None
        if name is not None and name in names:
            item.at("name", name).fail(f'Duplicate value: "{name}"')
        if name is not None:
            names.add(name)
        ports.append(ContainerPort(
            container_port=check_port_number(fields.req("containerPort")),
            name=name,
            protocol=protocol.one_of(PROTOCOLS) if protocol else "TCP",
        ))
    return tuple(ports)


def _decode_probe(node: Node) -> Probe:
    fields = node.obj(
        known=("tcpSocket", "exec", "httpGet", "grpc", "initialDelaySeconds", "periodSeconds",
               "timeoutSeconds", "successThreshold", "failureThreshold"),
        ignored=("terminationGracePeriodSeconds",),
    )
    for unsupported in ("httpGet", "grpc"):
        found = fields.opt(unsupported)
        if found is not None:
            found.fail(f"Forbidden: {unsupported} probes are not supported; use tcpSocket or exec")
    tcp, exec_ = fields.opt("tcpSocket"), fields.opt("exec")
    if (tcp is None) == (exec_ is None):
        node.fail("Required value: must specify exactly one handler type (tcpSocket or exec)")
    port: int | str | None = None
    command: tuple[str, ...] | None = None
    if tcp is not None:
        port = check_int_or_port_name(tcp.obj(known=("port",), ignored=("host",)).req("port"))
    if exec_ is not None:
        command = exec_.obj(known=("command",)).req("command").as_str_list()
    defaults = Probe()

    def number(key: str, default: int, low: int) -> int:
        found = fields.opt(key)
        return found.int_in(low, 2**31 - 1) if found else default

    return Probe(
        tcp_socket_port=port,
        exec_command=command,
        initial_delay_seconds=number("initialDelaySeconds", defaults.initial_delay_seconds, 0),
        period_seconds=number("periodSeconds", defaults.period_seconds, 1),
        timeout_seconds=number("timeoutSeconds", defaults.timeout_seconds, 1),
        success_threshold=number("successThreshold", defaults.success_threshold, 1),
        failure_threshold=number("failureThreshold", defaults.failure_threshold, 1),
    )


def decode_pod_status(node: Node) -> PodStatus:
    """A pod status as the node runtime reports it (and the store keeps it): phase, IPs, conditions, start."""
    fields = node.obj(known=("phase", "podIP", "hostIP", "conditions", "startTime"),
                      ignored=("podIPs", "hostIPs", "qosClass", "containerStatuses"))
    phase, pod_ip, host_ip = fields.opt("phase"), fields.opt("podIP"), fields.opt("hostIP")
    start, conditions_node = fields.opt("startTime"), fields.opt("conditions")
    conditions: list[PodCondition] = []
    for item in conditions_node.items() if conditions_node else []:
        cond = item.obj(known=("type", "status"), ignored=("lastProbeTime", "lastTransitionTime"))
        type_node = cond.req("type")
        check_qualified_name(type_node, type_node.as_str())
        if any(c.type == type_node.value for c in conditions):
            type_node.fail(f"Duplicate value: {quote(type_node.value)}")
        status = cond.req("status").one_of(CONDITION_STATUSES)
        conditions.append(PodCondition(type_node.as_str(), status))
    return PodStatus(
        phase=phase.one_of(POD_PHASES) if phase else "Pending",
        pod_ip=check_ipv4(pod_ip) if pod_ip and pod_ip.value != "" else None,
        host_ip=check_ipv4(host_ip) if host_ip and host_ip.value != "" else None,
        conditions=tuple(conditions),
        start_time=check_rfc3339(start) if start else None,
    )
