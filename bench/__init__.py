"""Benchmarks of Velvet against kube-proxy's peers: run from the repo root as `python -m bench.<script>`."""
