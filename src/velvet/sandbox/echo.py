"""A tiny TCP/UDP echo and "who am I" server (and client) for pods in the sandbox and in tests.

Serve:  python -m velvet.sandbox.echo --tcp 8080 --udp 8081 --reply hostname|echo
Query:  python -m velvet.sandbox.echo --query tcp://10.244.0.11:8080 [--message hi] [--timeout 2]

`--reply hostname` answers every TCP line and every UDP datagram with
"<name> <client-ip>:<client-port>\\n" (name: $HOSTNAME, else the host name), so a test sees which
pod answered and which source address the server saw; an HTTP GET gets the same line as an HTTP/1.0
body. `--reply echo` sends back what it received. The query client prints the reply and exits 0,
or prints the error to stderr and exits 1.
"""

from __future__ import annotations

import argparse
import os
import socket
import socketserver
import sys
import threading
from urllib.parse import urlsplit


def identity() -> str:
    """The name this server answers with."""
    return os.environ.get("HOSTNAME") or socket.gethostname()


def answer(mode: str, data: bytes, peer: tuple[str, int]) -> bytes:
    """The reply to `data` from `peer`."""
    if mode == "echo":
        return data
    return f"{identity()} {peer[0]}:{peer[1]}\n".encode()


class _TCPHandler(socketserver.StreamRequestHandler):
    """Answers each line of a TCP connection (or one HTTP request)."""

    mode = "hostname"

    def handle(self) -> None:
        """Serve one connection until the client closes it."""
        peer = self.client_address
        for line in self.rfile:
            if self.mode == "hostname" and line.startswith((b"GET ", b"HEAD ")):
                body = answer(self.mode, line, peer)
                head = f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\nContent-Type: text/plain\r\n\r\n"
                self.wfile.write(head.encode() + body)
                return
            self.wfile.write(answer(self.mode, line, peer))
            self.wfile.flush()


class _UDPHandler(socketserver.BaseRequestHandler):
    """Answers each datagram."""

    mode = "hostname"

    def handle(self) -> None:
        """Reply to one datagram."""
        data, sock = self.request
        sock.sendto(answer(self.mode, data, self.client_address), self.client_address)


class _TCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 128  # socketserver's default backlog of 5 drops SYNs of concurrent clients


def serve(tcp: int | None, udp: int | None, mode: str, host: str = "0.0.0.0") -> None:
    """Serve until killed."""
    servers: list[socketserver.BaseServer] = []
    if tcp is not None:
        servers.append(_TCPServer((host, tcp), type("H", (_TCPHandler,), {"mode": mode})))
    if udp is not None:
        handler = type("H", (_UDPHandler,), {"mode": mode})
        servers.append(socketserver.ThreadingUDPServer((host, udp), handler))
    if not servers:
        raise SystemExit("nothing to serve: give --tcp and/or --udp")
    print(f"{identity()} serving tcp={tcp} udp={udp} reply={mode}", flush=True)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def query(url: str, message: str, timeout: float) -> str:
    """Send `message` to tcp://ip:port or udp://ip:port and return the first reply line."""
    parts = urlsplit(url)
    if parts.scheme not in ("tcp", "udp") or not parts.hostname or parts.port is None:
        raise ValueError(f"bad target {url!r}: want tcp://IP:PORT or udp://IP:PORT")
    target = (parts.hostname, parts.port)
    payload = (message + "\n").encode()
    if parts.scheme == "tcp":
        with socket.create_connection(target, timeout=timeout) as sock:
            sock.sendall(payload)
            return sock.makefile("rb").readline().decode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(payload, target)
        return sock.recv(65535).decode()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(
        prog="python -m velvet.sandbox.echo", description="TCP/UDP echo and who-am-I server and client"
    )
    p.add_argument("--tcp", type=int, help="TCP port to serve")
    p.add_argument("--udp", type=int, help="UDP port to serve")
    p.add_argument("--reply", choices=("hostname", "echo"), default="hostname")
    p.add_argument("--query", metavar="URL", help="act as a client: tcp://IP:PORT or udp://IP:PORT")
    p.add_argument("--message", default="hello")
    p.add_argument("--timeout", type=float, default=2.0)
    args = p.parse_args(argv)
    if args.query:
        try:
            sys.stdout.write(query(args.query, args.message, args.timeout))
        except (OSError, ValueError) as exc:
            print(f"query {args.query}: {exc}", file=sys.stderr)
            return 1
        return 0
    serve(args.tcp, args.udp, args.reply)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
