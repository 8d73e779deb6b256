"""Open many half-open HTTP requests to host:port as an unprivileged user and hold them (a test helper).

Run as a script: `python halfopen.py HOST PORT COUNT`. Started as root, it drops to `nobody` after
raising its file limit. It prints one JSON line when its connections are open ({"open", "failed",
"uid"}), then on each line read from stdin another ({"closed_by_server", "still_open"}); it exits
at end of input.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import sys

NOBODY = 65534
PARTIAL = b"GET /ui/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


def _closed(sock: socket.socket) -> bool:
    """Whether the server ended this connection (an answer or end of stream arrived, or a reset)."""
    try:
        sock.recv(65536, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except OSError:
        pass
    return True


def main() -> None:
    """Open, report, hold, report on request."""
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 256), hard))
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    held: list[socket.socket] = []
    failed = 0
    for _ in range(count):
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(10)
        try:
            sock.connect((host, port))
            sock.sendall(PARTIAL)
        except OSError:
            failed += 1
            sock.close()
            continue
        held.append(sock)
    print(json.dumps({"open": len(held), "failed": failed, "uid": os.getuid()}), flush=True)
    for _ in sys.stdin:
        closed = sum(_closed(s) for s in held)
        print(json.dumps({"closed_by_server": closed, "still_open": len(held) - closed}), flush=True)
    for sock in held:
        sock.close()


if __name__ == "__main__":
    main()
