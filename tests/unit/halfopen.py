"""Open many half-open HTTP requests to host:port as an unprivileged user and hold them (a test helper).

Run as a script: `python halfopen.py HOST PORT COUNT`. Started as root, it drops to `nobody` after
raising its file limit. It starts every connection at once and gives them CONNECT_SECONDS in all
(a server that stops accepting cannot make it hang), sends each a request that never ends, prints
one JSON line ({"open", "failed", "uid"}) and holds them until the end of its input.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import select
import socket
import sys
import time

NOBODY = 65534
CONNECT_SECONDS = 15.0
PARTIAL = b"GET /ui/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


def _connect_all(host: str, port: int, count: int) -> tuple[list[socket.socket], int]:
    """Start `count` connections, wait for them together; the connected ones and how many failed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    pending: dict[int, socket.socket] = {}
    poller = select.poll()
    for _ in range(count):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        if sock.connect_ex((host, port)) not in (0, errno.EINPROGRESS):
            sock.close()
            continue
        pending[sock.fileno()] = sock
        poller.register(sock, select.POLLOUT)
    held: list[socket.socket] = []
    deadline = time.monotonic() + CONNECT_SECONDS
    while pending and (left := deadline - time.monotonic()) > 0:
        for fd, _ in poller.poll(left * 1000):
            poller.unregister(fd)
            sock = pending.pop(fd)
            try:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 and sock.send(PARTIAL):
                    held.append(sock)
                    continue
            except OSError:
                pass
            sock.close()
    for sock in pending.values():
        sock.close()
    return held, count - len(held)


def main() -> None:
    """Open, report, hold."""
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 256), hard))
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    held, failed = _connect_all(host, port, count)
    print(json.dumps({"open": len(held), "failed": failed, "uid": os.getuid()}), flush=True)
    sys.stdin.read()
    for sock in held:
        sock.close()


if __name__ == "__main__":
    main()
