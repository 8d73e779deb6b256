"""Strict decoding of VelvetTracingPolicy(Namespaced): Tetragon's field names, and a clear refusal of the
parts of Tetragon's TracingPolicy that Velvet does not do (never silently ignored)."""

from __future__ import annotations

from velvet.model.decode_meta import decode_meta, decode_selector
from velvet.model.tracing import (
    ADDRESS_HOOKS,
    CONNECT_HOOK,
    DEV_HOOK,
    EPERM_ERROR,
    EXEC_HOOK,
    FAMILIES,
    GUARD_HOOKS,
    PROTOCOLS,
    SENDMSG_HOOK,
    SENDTO_HOOK,
    SOCKET_HOOK,
    SOCKET_TYPES,
    SYSCALL_HOOKS,
    SYSCTL_HOOK,
    ActionSelector,
    ArgSelector,
    BinarySelector,
    PIDSelector,
    Tracepoint,
    TracepointArg,
    TracingPolicySpec,
    TracingSelector,
    VelvetTracingPolicy,
    VelvetTracingPolicyNamespaced,
    parse_cidr,
    parse_number,
    parse_ports,
)
from velvet.model.validate import Node, Obj, check_dns1123_subdomain, quote

MAX_SELECTORS = 5  # per hook, as Tetragon
MAX_VALUES = 16  # per matchBinaries / matchArgs / matchPIDs entry
MAX_PATH = 255  # bytes of a binary path or prefix (the kernel's keys hold 256 with the NUL)
MAX_TRACEPOINTS = 8
SIGNALS = range(1, 65)

# hook -> {field index in the tracepoint's format, the 4 common fields counted as Tetragon does: (its name,
# the argument types that fit it)}
_STRING_TYPES = ("string", "filename", "data_loc", "auto")
_INT_TYPES = ("int", "int32", "uint32", "int64", "uint64", "auto")
_SOCK_TYPES = ("sockaddr", "auto")
MAX_SYSCTL_PREFIX = 63  # bytes (guard_rule.name_prefix holds 64 with the NUL)
HOOK_FIELDS: dict[tuple[str, str], dict[int, tuple[str, tuple[str, ...]]]] = {
    EXEC_HOOK: {4: ("filename", _STRING_TYPES), 5: ("pid", _INT_TYPES), 6: ("old_pid", _INT_TYPES)},
    **{hook: {i: (f.name, _STRING_TYPES if f.string else _INT_TYPES) for i, f in fields.items()}
       for hook, (_, fields) in SYSCALL_HOOKS.items()},
    CONNECT_HOOK: {4: ("__syscall_nr", _INT_TYPES), 5: ("fd", _INT_TYPES), 6: ("uservaddr", _SOCK_TYPES),
                   7: ("addrlen", _INT_TYPES)},
    SENDTO_HOOK: {4: ("__syscall_nr", _INT_TYPES), 5: ("fd", _INT_TYPES), 7: ("len", _INT_TYPES),
                  8: ("flags", _INT_TYPES), 9: ("addr", _SOCK_TYPES), 10: ("addr_len", _INT_TYPES)},
    SENDMSG_HOOK: {4: ("__syscall_nr", _INT_TYPES), 5: ("fd", _INT_TYPES), 6: ("msg", _SOCK_TYPES),
                   7: ("flags", _INT_TYPES)},
    SOCKET_HOOK: {4: ("__syscall_nr", _INT_TYPES), 5: ("family", _INT_TYPES), 6: ("type", _INT_TYPES),
                  7: ("protocol", _INT_TYPES)},
    # Velvet's own events (no syscall maps onto them): a sysctl access and a device access
    SYSCTL_HOOK: {0: ("name", _STRING_TYPES), 1: ("write", _INT_TYPES)},
    DEV_HOOK: {0: ("type", _STRING_TYPES), 1: ("major", _INT_TYPES), 2: ("minor", _INT_TYPES),
               3: ("access", _STRING_TYPES)},
}
_ADDRESS_OPERATORS = ("DAddr", "DPort", "Family", "Protocol")
# cgroup-hook tracepoint -> {field matchArgs may compare: the operators Velvet does on it}
GUARD_MATCH_ARGS: dict[tuple[str, str], dict[int, tuple[str, ...]]] = {
    CONNECT_HOOK: {6: _ADDRESS_OPERATORS}, SENDTO_HOOK: {9: _ADDRESS_OPERATORS},
    SENDMSG_HOOK: {6: _ADDRESS_OPERATORS},
    SOCKET_HOOK: {5: ("Equal",), 6: ("Equal",), 7: ("Equal",)},
    SYSCTL_HOOK: {0: ("Prefix",), 1: ("Equal",)},
    DEV_HOOK: {0: ("Equal",), 1: ("Equal",), 2: ("Equal",), 3: ("Equal",)},
}
# the operators Velvet does on a syscall hook's string and int arguments
STRING_OPERATORS = ("Equal", "Prefix", "Postfix")
INT_OPERATORS = ("Equal", "GT", "LT")
MAX_INT_EQUAL = 4  # values of an int matchArgs Equal (rt_rule.arg_nums)
MAX_REPORTED_STRINGS = 2  # string args a syscall hook reports (the event holds two)
SUPPORTED_HOOKS = ", ".join(f"{s}/{e}" for s, e in HOOK_FIELDS)

# Tetragon's fields that Velvet refuses, by where they are.
_SPEC_UNSUPPORTED = ("kprobes", "uprobes", "lsmhooks", "usdts", "lists", "enforcers", "options",
                     "containerSelector", "loader")
_TRACEPOINT_UNSUPPORTED = ("message", "tags", "raw")
_ARG_UNSUPPORTED = ("label", "maxData", "returnCopy", "sizeArgIndex", "resolve")
_SELECTOR_UNSUPPORTED = ("matchData", "matchReturnArgs", "matchReturnActions", "matchNamespaceChanges",
                         "matchCapabilities", "matchCapabilityChanges", "matchParentBinaries")
_ACTION_UNSUPPORTED = ("argFd", "argName", "argUrl", "argFqdn", "argSock", "rateLimit",
                       "rateLimitScope", "kernelStackTrace", "userStackTrace", "imaHash")

# Tetragon's operators and actions, and the ones Velvet does.
BINARY_OPERATORS = ("In", "NotIn", "Prefix", "NotPrefix", "Postfix", "NotPostfix")
BINARY_SUPPORTED = ("In", "NotIn", "Prefix")
ARG_OPERATORS = ("Equal", "NotEqual", "Prefix", "NotPrefix", "Postfix", "NotPostfix", "GreaterThan", "GT",
                 "LessThan", "LT", "Mask", "SPort", "NotSPort", "SPortPriv", "NotSPortPriv", "DPort",
                 "NotDPort", "DPortPriv", "NotDPortPriv", "SAddr", "NotSAddr", "DAddr", "NotDAddr",
                 "Protocol", "Family", "State", "InMap", "NotInMap", "CapabilitiesGained", "FileType",
                 "NotFileType")
ARG_SUPPORTED = ("Equal", "Prefix", "Postfix", "GT", "LT", *_ADDRESS_OPERATORS)
PID_OPERATORS = ("In", "NotIn")
ACTIONS = ("Post", "FollowFD", "UnfollowFD", "Sigkill", "CopyFD", "Override", "GetUrl", "DnsLookup", "NoPost",
           "Signal", "TrackSock", "UntrackSock", "NotifyEnforcer", "CleanupEnforcerNotification", "Set")
ACTIONS_SUPPORTED = ("Post", "NoPost", "Sigkill", "Signal", "Override")
GUARD_ACTIONS = ("Override", "Post")
_GUARD_NAMES = ", ".join("/".join(h) for h in GUARD_HOOKS)
_WHY_NOT = {
    "Override": f"this kernel has no bpf_override_return; only cgroup hooks refuse a call, on {_GUARD_NAMES}",
    "matchNamespaces": "Linux namespaces are not matched; use spec.podSelector or a "
                       "VelvetTracingPolicyNamespaced",
    "kprobes": "this kernel has no kprobes; use spec.tracepoints",
    "lsmhooks": "this kernel has no BPF LSM",
}


def decode_tracing_policy(root: Obj, *, trusted: bool) -> VelvetTracingPolicy:
    """A cluster-wide VelvetTracingPolicy."""
    meta = decode_meta(root.req("metadata"), namespaced=False, trusted=trusted,
                       check_name=check_dns1123_subdomain)
    return VelvetTracingPolicy(metadata=meta, spec=_decode_spec(root))


def decode_tracing_policy_namespaced(root: Obj, *, trusted: bool) -> VelvetTracingPolicyNamespaced:
    """A VelvetTracingPolicyNamespaced: its hooks apply to its namespace's pods only."""
    meta = decode_meta(root.req("metadata"), namespaced=True, trusted=trusted,
                       check_name=check_dns1123_subdomain)
    return VelvetTracingPolicyNamespaced(metadata=meta, spec=_decode_spec(root))


def _refuse(fields: Obj, names: tuple[str, ...]) -> None:
    """Fail at the first of `names` present: a field Tetragon has and Velvet does not do."""
    for name in names:
        node = fields.opt(name)
        if node is not None:
            why = _WHY_NOT.get(name, "")
            node.fail(f"not supported: Velvet does not implement Tetragon's {quote(name)}"
                      + (f" ({why})" if why else ""))


def _decode_spec(root: Obj) -> TracingPolicySpec:
    fields = root.req("spec").obj(known=("tracepoints", "podSelector", *_SPEC_UNSUPPORTED))
    _refuse(fields, _SPEC_UNSUPPORTED)
    tracepoints_node = fields.req("tracepoints")
    tracepoints = tuple(_decode_tracepoint(t) for t in tracepoints_node.items())
    if not tracepoints:
        tracepoints_node.fail("Required value: at least one tracepoint")
    if len(tracepoints) > MAX_TRACEPOINTS:
        tracepoints_node.fail(f"Too many: {len(tracepoints)}: must have at most {MAX_TRACEPOINTS} items")
    selector = fields.opt("podSelector")
    return TracingPolicySpec(tracepoints, decode_selector(selector) if selector else None)


def _decode_tracepoint(node: Node) -> Tracepoint:
    fields = node.obj(known=("subsystem", "event", "args", "selectors", *_TRACEPOINT_UNSUPPORTED))
    _refuse(fields, _TRACEPOINT_UNSUPPORTED)
    subsystem, event = fields.req("subsystem").as_str(), fields.req("event").as_str()
    hook = HOOK_FIELDS.get((subsystem, event))
    if hook is None:
        fields.req("event").fail(f"not supported: tracepoint {quote(subsystem + '/' + event)} "
                                 f"(supported: {SUPPORTED_HOOKS})")
    args_node, selectors_node = fields.opt("args"), fields.opt("selectors")
    args = tuple(_decode_arg(a, hook, subsystem, event) for a in args_node.items()) if args_node else ()
    indexes = [a.index for a in args]
    if len(set(indexes)) != len(indexes):
        fields.req("args").fail("Duplicate value: each argument index may appear once")
    strings = [i for i in indexes if (subsystem, event) in SYSCALL_HOOKS
               and SYSCALL_HOOKS[(subsystem, event)][1][i].string]
    if len(strings) > MAX_REPORTED_STRINGS:
        fields.req("args").fail(f"not supported: more than {MAX_REPORTED_STRINGS} string arguments reported")
    selectors = tuple(_decode_selector(s, frozenset(indexes)) for s in selectors_node.items()) \
        if selectors_node else ()
    if len(selectors) > MAX_SELECTORS:
        fields.req("selectors").fail(f"Too many: {len(selectors)}: must have at most {MAX_SELECTORS} items")
    for i, selector in enumerate(selectors):
        if (subsystem, event) in GUARD_MATCH_ARGS:
            _check_guard_selector(fields.req("selectors").at(i, None), selector, (subsystem, event))
        else:
            if any(a.action == "Override" for a in selector.match_actions):
                fields.req("selectors").at(i, None).at("matchActions", None).at(0, None).at(
                    "action", "Override").fail(f"not supported: action \"Override\" on {subsystem}/{event}: "
                                               + _WHY_NOT["Override"])
            _check_match_args(fields, i, selector, (subsystem, event))
    return Tracepoint(subsystem, event, args, selectors)


def _check_match_args(fields: Obj, i: int, selector: TracingSelector, hook: tuple[str, str]) -> None:
    """Refuse the matchArgs Velvet does not do on this hook: one entry, on an argument of the syscall,
    Equal/Prefix/Postfix on a string, Equal/GT/LT on an int."""
    if not selector.match_args:
        return
    where = fields.req("selectors").at(i, None).at("matchArgs", None)
    name = "/".join(hook)
    if hook not in SYSCALL_HOOKS:
        where.fail(f"not supported on {name} yet: use matchBinaries for the executed path")
    if len(selector.match_args) > 1:
        where.fail("not supported: more than one matchArgs entry per selector")
    arg = selector.match_args[0]
    at = where.at(0, None)
    field = SYSCALL_HOOKS[hook][1].get(arg.index)
    if field is None or field.position < 0:
        at.at("index", arg.index).fail(f"not supported: matchArgs on field {arg.index} of {name} "
                                       "(an argument of the syscall is)")
    operators = STRING_OPERATORS if field.string else INT_OPERATORS
    if arg.operator not in operators:
        at.at("operator", arg.operator).fail(
            f"not supported: operator {quote(arg.operator)} on field {arg.index} ({field.name}) of {name} "
            f"(supported: {', '.join(operators)})")
    for j, value in enumerate(arg.values):
        item = at.at("values", None).at(j, value)
        if field.string and len(value.encode()) > MAX_PATH:
            item.fail(f"Invalid value: must be at most {MAX_PATH} bytes")
        if not field.string and not (value.lstrip("-").isdigit() and -2**31 <= int(value) < 2**31):
            item.fail(f"Invalid value: {quote(value)}: field {arg.index} ({field.name}) is compared as a "
                      "32-bit signed integer")
    if not field.string and arg.operator in ("GT", "LT") and len(arg.values) != 1:
        at.at("values", None).fail(f"Invalid value: operator {arg.operator} takes exactly one value")
    if not field.string and len(arg.values) > MAX_INT_EQUAL:
        at.at("values", None).fail(f"Too many: {len(arg.values)}: an int Equal takes at most {MAX_INT_EQUAL}")


def _check_guard_selector(where: Node, selector: TracingSelector, hook: tuple[str, str]) -> None:
    """Refuse what a cgroup hook cannot do: only Override (EPERM) or Post, matchBinaries In or Prefix, no
    matchPIDs, and matchArgs on the fields and with the operators the guard compares."""
    name = "/".join(hook)
    for action in selector.match_actions:
        if action.action not in GUARD_ACTIONS:
            where.at("matchActions", None).at(0, None).at("action", action.action).fail(
                f"not supported: action {quote(action.action)} on {name}, a cgroup hook "
                f"(supported: {', '.join(GUARD_ACTIONS)})")
    if selector.match_pids:
        where.at("matchPIDs", None).fail(f"not supported: matchPIDs on {name}, a cgroup hook "
                                         "(use matchBinaries or the pod selector)")
    for binaries in selector.match_binaries:
        if binaries.operator == "NotIn":
            where.at("matchBinaries", None).at(0, None).at("operator", "NotIn").fail(
                f"not supported: operator \"NotIn\" on {name}, a cgroup hook (supported: In, Prefix)")
    fields = GUARD_MATCH_ARGS[hook]
    seen: set[tuple[int, str]] = set()
    for j, arg in enumerate(selector.match_args):
        at = where.at("matchArgs", None).at(j, None)
        if arg.index not in fields:
            at.at("index", arg.index).fail(
                f"not supported: matchArgs on field {arg.index} of {name} (supported: "
                + ", ".join(str(i) for i in fields) + ")")
        if arg.operator not in fields[arg.index]:
            at.at("operator", arg.operator).fail(
                f"not supported: operator {quote(arg.operator)} on field {arg.index} of {name} "
                f"(supported: {', '.join(fields[arg.index])})")
        if (arg.index, arg.operator) in seen:
            at.fail(f"not supported: a second {arg.operator} on field {arg.index} (give several values)")
        seen.add((arg.index, arg.operator))
        for k, value in enumerate(arg.values):
            try:
                _check_guard_value(hook, arg.index, arg.operator, value)
            except ValueError as exc:
                at.at("values", None).at(k, value).fail(f"Invalid value: {exc}")


def _check_guard_value(hook: tuple[str, str], index: int, operator: str, value: str) -> None:
    """Raise ValueError when `value` is not one the guard can compare on this field."""
    if hook in ADDRESS_HOOKS:
        if operator == "DAddr":
            parse_cidr(value)
        elif operator == "DPort":
            parse_ports(value)
        elif operator == "Protocol":
            parse_number(value, PROTOCOLS, "protocol")
        elif parse_number(value, FAMILIES, "family") not in FAMILIES.values():
            raise ValueError(f"{value!r}: the cgroup hooks see AF_INET and AF_INET6 only")
    elif hook == SOCKET_HOOK:
        names, what = {5: (FAMILIES, "family"), 6: (SOCKET_TYPES, "socket type"),
                       7: (PROTOCOLS, "protocol")}[index]
        number = parse_number(value, names, what)
        if index == 5 and number not in FAMILIES.values():
            raise ValueError(f"{value!r}: the kernel runs the socket hook for AF_INET and AF_INET6 only")
    elif hook == SYSCTL_HOOK:
        if index == 0 and len(value.encode()) > MAX_SYSCTL_PREFIX:
            raise ValueError(f"must be at most {MAX_SYSCTL_PREFIX} bytes")
        if index == 1 and value not in ("0", "1"):
            raise ValueError(f"{value!r}: write is 1 (writes) or 0 (reads)")
    elif index == 0 and value not in ("c", "b"):
        raise ValueError(f"{value!r}: a device type is c or b")
    elif index in (1, 2) and not (value.isdigit() and int(value) < 2**31):
        raise ValueError(f"{value!r}: a device number is an integer")
    elif index == 3 and (not value or set(value) - set("rwm")):
        raise ValueError(f"{value!r}: a device access is made of r, w and m")


def _decode_arg(node: Node, hook: dict[int, tuple[str, tuple[str, ...]]], subsystem: str,
                event: str) -> TracepointArg:
    fields = node.obj(known=("index", "type", *_ARG_UNSUPPORTED))
    _refuse(fields, _ARG_UNSUPPORTED)
    index_node = fields.req("index")
    index = index_node.int_in(0, 31)
    if index not in hook:
        index_node.fail(f"Invalid value: {index}: {subsystem}/{event}'s fields are "
                        + ", ".join(f"{i} ({name})" for i, (name, _) in hook.items()))
    name, types = hook[index]
    type_node = fields.opt("type")
    arg_type = type_node.as_str() if type_node else "auto"
    if arg_type not in types:
        (type_node or node).fail(f"not supported: type {quote(arg_type)} for field {index} ({name}) of "
                                 f"{subsystem}/{event} (supported: {', '.join(types)})")
    return TracepointArg(index, arg_type)


def _decode_selector(node: Node, arg_indexes: frozenset[int]) -> TracingSelector:
    fields = node.obj(known=("matchBinaries", "matchArgs", "matchPIDs", "matchActions", "matchNamespaces",
                             *_SELECTOR_UNSUPPORTED))
    _refuse(fields, ("matchNamespaces", *_SELECTOR_UNSUPPORTED))
    binaries = tuple(_decode_binaries(n) for n in _items(fields, "matchBinaries"))
    if len(binaries) > 1:
        fields.req("matchBinaries").fail("Too many: only one matchBinaries entry per selector (as Tetragon)")
    args = tuple(_decode_match_arg(n, arg_indexes) for n in _items(fields, "matchArgs"))
    pids = tuple(_decode_pids(n) for n in _items(fields, "matchPIDs"))
    if len(pids) > 1:
        fields.req("matchPIDs").fail("not supported: more than one matchPIDs entry per selector")
    actions = tuple(_decode_action(n) for n in _items(fields, "matchActions"))
    if len(actions) > 1:
        fields.req("matchActions").fail("not supported: more than one matchActions entry per selector")
    return TracingSelector(binaries, args, pids, actions)


def _items(fields: Obj, key: str) -> list[Node]:
    node = fields.opt(key)
    return node.items() if node else []


def _values(fields: Obj) -> list[Node]:
    node = fields.req("values")
    items = node.items()
    if not items:
        node.fail("Required value: at least one value")
    if len(items) > MAX_VALUES:
        node.fail(f"Too many: {len(items)}: must have at most {MAX_VALUES} items")
    return items


def _operator(fields: Obj, known: tuple[str, ...], supported: tuple[str, ...]) -> str:
    node = fields.req("operator")
    operator = node.one_of(known)
    if operator not in supported:
        node.fail(f"not supported: operator {quote(operator)} (supported: {', '.join(supported)})")
    return operator


def _decode_binaries(node: Node) -> BinarySelector:
    fields = node.obj(known=("operator", "values", "followChildren"))
    follow = fields.opt("followChildren")
    if follow is not None and follow.as_bool():
        follow.fail("not supported: followChildren")
    operator = _operator(fields, BINARY_OPERATORS, BINARY_SUPPORTED)
    values: list[str] = []
    for value in _values(fields):
        path = value.as_str()
        if not path.startswith("/"):
            value.fail(f"Invalid value: {quote(path)}: must be an absolute path")
        if len(path.encode()) > MAX_PATH:
            value.fail(f"Invalid value: must be at most {MAX_PATH} bytes")
        values.append(path)
    return BinarySelector(operator, tuple(values))


def _decode_match_arg(node: Node, arg_indexes: frozenset[int]) -> ArgSelector:
    fields = node.obj(known=("index", "operator", "values", "args"))
    _refuse(fields, ("args",))
    index_node = fields.req("index")
    index = index_node.int_in(0, 31)
    if index not in arg_indexes:
        index_node.fail(f"Invalid value: {index}: no argument with this index in the hook's args")
    operator = _operator(fields, ARG_OPERATORS, ARG_SUPPORTED)
    values = tuple(v.as_str() if isinstance(v.value, str) else str(v.as_int()) for v in _values(fields))
    if operator in ("GT", "LT"):
        for value, item in zip(values, fields.req("values").items(), strict=True):
            if not value.lstrip("-").isdigit():
                item.fail(f"Invalid value: {quote(value)}: operator {operator} compares integers")
    return ArgSelector(index, operator, values)


def _decode_pids(node: Node) -> PIDSelector:
    fields = node.obj(known=("operator", "values", "followForks", "isNamespacePID"))
    operator = _operator(fields, PID_OPERATORS, PID_OPERATORS)
    values = tuple(v.int_in(1, 2**32 - 1) for v in _values(fields))
    follow, namespaced = fields.opt("followForks"), fields.opt("isNamespacePID")
    if namespaced is not None and namespaced.as_bool():
        namespaced.fail("not supported: isNamespacePID (pids are matched as the node sees them)")
    return PIDSelector(operator, values, follow_forks=follow.as_bool() if follow else False)


def _decode_action(node: Node) -> ActionSelector:
    fields = node.obj(known=("action", "argSig", "argError", *_ACTION_UNSUPPORTED))
    _refuse(fields, _ACTION_UNSUPPORTED)
    action_node = fields.req("action")
    action = action_node.one_of(ACTIONS)
    if action not in ACTIONS_SUPPORTED:
        why = _WHY_NOT.get(action, "")
        action_node.fail(f"not supported: action {quote(action)} (supported: {', '.join(ACTIONS_SUPPORTED)})"
                         + (f"; {why}" if why else ""))
    sig_node, error_node = fields.opt("argSig"), fields.opt("argError")
    if action == "Override":
        if error_node is None:
            node.at("argError", None).fail(
                f"Required value: the error of action Override ({EPERM_ERROR}: EPERM)")
        error = error_node.as_int()
        if error != EPERM_ERROR:
            error_node.fail(f"not supported: argError {error}: a cgroup hook fails the call with EPERM only "
                            f"(argError: {EPERM_ERROR})")
        return ActionSelector(action, arg_error=error)
    if error_node is not None:
        error_node.fail("Forbidden: argError is only for action Override")
    if action == "Signal":
        if sig_node is None:
            node.at("argSig", None).fail("Required value: the signal number of action Signal")
        return ActionSelector(action, sig_node.int_in(SIGNALS.start, SIGNALS.stop - 1))
    if sig_node is not None:
        sig_node.fail("Forbidden: argSig is only for action Signal")
    return ActionSelector(action)
