"""`velvet-cni`: the CNI plugin a container runtime executes; a thin relay to the node agent's API.

The runtime runs it once per operation with the parameters in the environment and the network config
on stdin; the answer (a result or a CNI error object) goes to stdout, exit status 0 on success. The
agent does the work (IPAM, veth, datapath, identity): the plugin only checks the call and relays it.
A DEL the agent cannot take (it is down) is queued on disk and done by the agent when it starts.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from velvet.api.client import ApiClient
from velvet.cni.spec import (
    AGENT_REFUSED,
    IO_FAILURE,
    NOT_READY,
    SUPPORTED_VERSIONS,
    TRY_AGAIN_LATER,
    UNSUPPORTED_FIELD,
    CniError,
    Invocation,
    parse_config,
    parse_environment,
)
from velvet.durable import private_dir, write_atomic
from velvet.errors import AgentUnavailable, ApiError
from velvet.paths import DEFAULT_SANDBOX, AgentPaths

AGENT_TIMEOUT_SECONDS = 20.0


def default_socket() -> Path:
    """The default sandbox's agent socket, for a config that names none."""
    return AgentPaths(DEFAULT_SANDBOX).socket


def delete_queue(config: Mapping[str, Any]) -> Path:
    """Where DELs wait for a stopped agent: the config's `deleteQueue`, else the default sandbox's."""
    given = config.get("deleteQueue")
    if isinstance(given, str) and given.startswith("/"):
        return Path(given)
    return AgentPaths(DEFAULT_SANDBOX).state_dir / "cni-delete-queue"


def queue_file(queue: Path, container_id: str, ifname: str) -> Path:
    """The queued DEL of one attachment (one file each, so a repeated DEL overwrites it)."""
    return queue / f"{container_id}_{ifname}.json"


def invoke(env: Mapping[str, str], stdin: bytes) -> dict[str, Any] | None:
    """Run one CNI operation; returns what to print (None: nothing), raises CniError."""
    if env.get("CNI_COMMAND") == "VERSION":
        return version_answer(stdin)
    command, container_id, netns, ifname, args = parse_environment(env)
    config = parse_config(stdin)
    if command == "ADD" and "prevResult" in config:
        raise CniError(UNSUPPORTED_FIELD, "prevResult: Velvet does not chain: make velvet-cni the first and "
                                          "only interface plugin of the network's plugin list")
    invocation = Invocation(command, container_id, netns, ifname, args, config)
    socket = Path(str(config.get("socket") or default_socket()))
    try:
        answer = ApiClient(socket, timeout=AGENT_TIMEOUT_SECONDS).post("/v1/cni", invocation.to_json())
    except AgentUnavailable as exc:
        if command == "DEL":
            queue = delete_queue(config)
            private_dir(queue)
            write_atomic(queue_file(queue, container_id, ifname), json.dumps(invocation.to_json()).encode())
            return None
        code = NOT_READY if command == "STATUS" else TRY_AGAIN_LATER
        raise CniError(code, f"the Velvet agent is not ready: {exc}") from None
    except ApiError as exc:
        raise CniError(AGENT_REFUSED, f"the Velvet agent refused {command}: {exc}") from None
    if not isinstance(answer, dict):
        raise CniError(AGENT_REFUSED, f"the Velvet agent answered {command} with {answer!r}")
    if "error" in answer:
        error = answer["error"]
        raise CniError(int(error["code"]), str(error["msg"]), str(error.get("details", "")))
    result = answer.get("result")
    if result is None:
        return None
    return {"cniVersion": invocation.version, **result}


def version_answer(stdin: bytes) -> dict[str, Any]:
    """VERSION: the versions Velvet speaks, in the version asked (1.0.0 when stdin names none)."""
    try:
        asked = json.loads(stdin or b"{}").get("cniVersion", "1.0.0")
    except (ValueError, AttributeError):
        asked = "1.0.0"
    return {"cniVersion": asked if asked in SUPPORTED_VERSIONS else "1.0.0",
            "supportedVersions": list(SUPPORTED_VERSIONS)}


def run(env: Mapping[str, str], stdin: BinaryIO, stdout: TextIO) -> int:
    """Read stdin, invoke, write the answer or the error object; returns the exit status."""
    version = "1.0.0"
    try:
        try:
            raw = stdin.read()
        except OSError as exc:
            raise CniError(IO_FAILURE, f"stdin: {exc}") from None
        try:
            asked = json.loads(raw).get("cniVersion")
            version = asked if asked in SUPPORTED_VERSIONS else version
        except (ValueError, AttributeError):
            pass
        answer = invoke(env, raw)
    except CniError as exc:
        stdout.write(json.dumps(exc.to_json(version)) + "\n")
        return 1
    if answer is not None:
        stdout.write(json.dumps(answer) + "\n")
    return 0


def main() -> int:
    """Console entry point of `velvet-cni`."""
    return run(os.environ, sys.stdin.buffer, sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
