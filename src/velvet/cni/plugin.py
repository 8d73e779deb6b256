"""`velvet-cni`: the CNI plugin a container runtime executes; a thin relay to the node agent's API.

The runtime runs it once per operation with the parameters in the environment and the network config
on stdin; the answer (a result or a CNI error object) goes to stdout, exit status 0 on success. The
agent does the work (IPAM, veth, datapath, identity): the plugin only checks the call and relays it.
A DEL the agent cannot take (it is down) is queued on disk and done by the agent when it starts.
"""

from __future__ import annotations

import json
import os
import socket
import sys

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
from velvet.errors import AgentUnavailable, ApiError

# Only what every call needs is imported at start (the plugin is one process per call, and ADD's
# budget is 100 ms); `velvet.paths` and `velvet.durable` are imported on the paths that use them.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path
    from typing import Any, BinaryIO, TextIO

AGENT_TIMEOUT_SECONDS = 20.0
CNI_API_PATH = "/v1/cni"


def default_socket() -> str:
    """The default sandbox's agent socket, for a config that names none."""
    from velvet.paths import DEFAULT_SANDBOX, AgentPaths

    return str(AgentPaths(DEFAULT_SANDBOX).socket)


def delete_queue(config: Mapping[str, Any]) -> Path:
    """Where DELs wait for a stopped agent: the config's `deleteQueue`, else the default sandbox's."""
    from pathlib import Path

    from velvet.paths import DEFAULT_SANDBOX, AgentPaths

    given = config.get("deleteQueue")
    if isinstance(given, str) and given.startswith("/"):
        return Path(given)
    return AgentPaths(DEFAULT_SANDBOX).state_dir / "cni-delete-queue"


def queue_file(queue: Path, container_id: str, ifname: str) -> Path:
    """The queued DEL of one attachment (one file each, so a repeated DEL overwrites it)."""
    return queue / f"{container_id}_{ifname}.json"


def _unchunk(data: bytes) -> bytes:
    """The body of a chunked HTTP/1.1 answer."""
    body, rest = b"", data
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            return body
        body, rest = body + rest[:size], rest[size + 2:]


def post_json(socket_path: str, path: str, body: object, timeout: float) -> Any:
    """POST `body` as JSON to the agent's API on its unix socket; the decoded answer.

    One HTTP/1.1 request on a fresh connection, read to its close: a few lines instead of the API's
    client, because importing http.client (with email and ssl) cost the plugin ~30 ms on every call.
    Raises AgentUnavailable when nobody answers in time, ApiError on an error or broken answer.
    """
    payload = json.dumps(body).encode()
    request = (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode() + payload
    chunks = []
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    try:
        try:
            conn.connect(socket_path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise AgentUnavailable(f"no Velvet agent answers on {socket_path}: start one with "
                                   "`velvet sandbox up` (or `velvet agent` on a node)") from exc
        except PermissionError as exc:
            raise AgentUnavailable(f"permission denied on {socket_path}: the API is root-only") from exc
        conn.sendall(request)
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    except TimeoutError as exc:
        raise AgentUnavailable(f"the agent on {socket_path} did not answer POST {path} within "
                               f"{timeout:g} s") from exc
    except OSError as exc:
        raise ApiError(f"the agent broke off POST {path}: {exc}") from exc
    finally:
        conn.close()
    head, sep, data = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = status_line.split(" ", 2)[1] if status_line.startswith("HTTP/1.") and " " in status_line else ""
    if not sep or not status.isdigit():
        raise ApiError(f"the agent answered POST {path} with no HTTP response: {head[:80]!r}")
    headers = {k.strip().lower(): v.strip().lower() for k, _, v in (h.partition(":") for h in header_lines)}
    try:
        if headers.get("transfer-encoding") == "chunked":
            data = _unchunk(data)
        decoded = json.loads(data) if data else None
    except ValueError:
        raise ApiError(f"the agent answered POST {path} with HTTP {status} and no JSON: "
                       f"{data[:80]!r}") from None
    if int(status) >= 400:
        if isinstance(decoded, dict) and isinstance(decoded.get("error"), str):
            raise ApiError(decoded["error"])
        raise ApiError(f"the agent answered POST {path} with HTTP {status}")
    return decoded


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
    agent = str(config.get("socket") or default_socket())
    try:
        answer = post_json(agent, CNI_API_PATH, invocation.to_json(), AGENT_TIMEOUT_SECONDS)
    except AgentUnavailable as exc:
        if command == "DEL":
            from velvet.durable import private_dir, write_atomic

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
