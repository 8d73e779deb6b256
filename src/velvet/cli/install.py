"""`velvet install --render`: the manifests that run the agent on every node, for `kubectl apply -f -`."""

from __future__ import annotations

import argparse
import sys

from velvet.install.render import (
    DEFAULT_API_SERVER_PORT,
    DEFAULT_NAMESPACE,
    InstallOptionError,
    InstallOptions,
    render,
    to_yaml,
)


def cmd_install(args: argparse.Namespace) -> int:
    """Print the manifests with the options applied; a bad option is one line and exit status 2."""
    try:
        if not args.render:
            raise InstallOptionError("velvet install applies nothing itself: use --render and pipe it to "
                                     "`kubectl apply -f -`")
        objects = render(InstallOptions(
            routing=args.routing, pod_cidr_pool=args.pod_cidr_pool, policy_audit_mode=args.policy_audit_mode,
            uplink=args.uplink, api_server_host=args.api_server_host, api_server_port=args.api_server_port,
            image=args.image, namespace=args.namespace))
    except InstallOptionError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(to_yaml(objects))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `velvet install`."""
    p = sub.add_parser("install", help="print the Kubernetes manifests of the agent (--render)")
    p.add_argument("--render", action="store_true",
                   help="print the manifests (as `kubectl kustomize deploy/kubernetes`), options applied")
    p.add_argument("--routing", default=None, metavar="native|tunnel",
                   help="how pods reach other nodes' pods (default: native)")
    p.add_argument("--pod-cidr-pool", default=None, metavar="CIDR",
                   help="the cluster's pod CIDR pool, recorded in velvet-config (not yet used by the agent)")
    p.add_argument("--policy-audit-mode", action="store_true", help="report policy verdicts, drop nothing")
    p.add_argument("--uplink", default=None, metavar="IFNAME",
                   help="the nodes' interface receiving NodePort and external traffic (default: none)")
    p.add_argument("--api-server-host", default=None, metavar="HOST",
                   help="the API server's address for the agent, when nothing balances the kubernetes "
                        "Service before it runs (no kube-proxy)")
    p.add_argument("--api-server-port", default=None, metavar="PORT",
                   help=f"the API server's port (default with --api-server-host: {DEFAULT_API_SERVER_PORT})")
    p.add_argument("--image", default=None, metavar="REF",
                   help="the agent's image (default: localhost/velvet:0.1.0)")
    p.add_argument("--namespace", default=DEFAULT_NAMESPACE, metavar="NS",
                   help=f"the agent's namespace (default: {DEFAULT_NAMESPACE}; another one is created)")
    p.set_defaults(func=cmd_install)
