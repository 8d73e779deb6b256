"""A tiny HTTP client for inside a pod: N GET requests, each on a new connection, one line per answer.

Run:  python -m velvet.connectivity.httpget [--count 20] [--timeout 2] http://10.96.1.1/v1/request-landing

Prints the first line of each response body (the echo server of `velvet.sandbox.echo` answers
"<pod name> <client ip>:<port>"), or "error: ..." for a request that failed; exits 0 when every
request got a 200 answer. A new connection per request lets a service balance every request.
"""

from __future__ import annotations

import argparse
import http.client
from urllib.parse import urlsplit


def get(url: str, timeout: float) -> str:
    """The first body line of a GET of `url` (raises OSError or ValueError on failure)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"bad URL {url!r}: want http://HOST[:PORT]/PATH")
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", parts.path or "/")
        response = conn.getresponse()
        body = response.read().decode(errors="replace")
    except http.client.HTTPException as exc:
        raise OSError(f"bad HTTP answer: {exc!r}") from None
    finally:
        conn.close()
    if response.status != 200:
        raise OSError(f"HTTP {response.status} {response.reason}")
    return body.splitlines()[0] if body else ""


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="python -m velvet.connectivity.httpget",
                                description="GET a URL N times, one new connection each")
    p.add_argument("url")
    p.add_argument("--count", type=int, default=1, help="requests to make (default 1)")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds per request (default 2)")
    args = p.parse_args(argv)
    failures = 0
    for _ in range(args.count):
        try:
            line = get(args.url, args.timeout)
        except (OSError, ValueError) as exc:
            failures += 1
            line = f"error: {exc or type(exc).__name__}"
        print(line, flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
