"""Test the install manifests: kustomize renders them, Kubernetes' schemas accept them, and `velvet install
--render` prints the same objects with its options applied."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from install_render import REPO, find, kustomize

from velvet.cli.main import main
from velvet.install.render import InstallOptions, rbac_rules, render
from velvet.model.codec import from_dict

KUBERNETES_VERSIONS = ("1.32", kubernetes_validate.latest_version())
"""The kubectl on these machines, and the newest release kubernetes-validate bundles schemas of."""

SOURCE_VERBS = {
    ("", "namespaces"): {"list", "watch"},
    ("", "pods"): {"list", "watch"},
    ("", "services"): {"list", "watch"},
    ("", "nodes"): {"get", "list", "watch"},
    ("discovery.k8s.io", "endpointslices"): {"list", "watch"},
    ("networking.k8s.io", "networkpolicies"): {"list", "watch"},
    ("velvet.io", "velvetidentities"): {"get", "list", "watch", "create", "delete"},
    ("velvet.io", "velvetendpoints"): {"list", "watch", "create", "update", "delete"},
    ("velvet.io", "velvettracingpolicies"): {"list", "watch"},
    ("velvet.io", "velvettracingpoliciesnamespaced"): {"list", "watch"},
}
"""What `velvet agent --source kubernetes` calls (tests/kubeapi checks the requests it makes)."""


def key(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    """apiVersion, kind, namespace, name."""
    return obj["apiVersion"], obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def strict_errors(objects: list[dict[str, Any]]) -> list[str]:
    """Every object that a Kubernetes release's schemas refuse in strict mode, with the reason."""
    errors = []
    for version in KUBERNETES_VERSIONS:
        for obj in objects:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                errors.append(f"{version} {obj['kind']}/{obj['metadata']['name']}: {exc.message} "
                              f"at {'.'.join(map(str, exc.path))}")
    return errors


def test_the_base_renders_every_object_of_the_install() -> None:
    """Test that kubectl kustomize renders the CRDs, RBAC, ConfigMap and DaemonSet, in kube-system."""
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in kustomize())
    assert kinds == [("ClusterRole", "velvet"), ("ClusterRoleBinding", "velvet"),
                     ("ConfigMap", "velvet-config"),
                     ("CustomResourceDefinition", "velvetendpoints.velvet.io"),
                     ("CustomResourceDefinition", "velvetidentities.velvet.io"),
                     ("CustomResourceDefinition", "velvettracingpolicies.velvet.io"),
                     ("CustomResourceDefinition", "velvettracingpoliciesnamespaced.velvet.io"),
                     ("DaemonSet", "velvet"),
                     ("ServiceAccount", "velvet")]
    assert {o["metadata"].get("namespace") for o in kustomize() if o["kind"] in
            ("ConfigMap", "DaemonSet", "ServiceAccount")} == {"kube-system"}


def test_every_object_validates_against_the_kubernetes_schemas_in_strict_mode() -> None:
    """Test that every rendered object (CRDs as apiextensions.k8s.io/v1) passes the OpenAPI schemas of
    Kubernetes 1.32 and the newest release, with unknown fields refused."""
    assert strict_errors(kustomize()) == []


def test_strict_validation_refuses_a_misspelt_field() -> None:
    """Test that the validation above has teeth: a misspelt field of the DaemonSet is refused."""
    objects = kustomize()
    pod = find(objects, "DaemonSet", "velvet")["spec"]["template"]["spec"]
    pod["containers"][0]["securityContext"]["privilegd"] = True
    assert any("'privilegd' was unexpected" in e for e in strict_errors(objects))


def crd_schema(name: str) -> dict[str, Any]:
    """The openAPIV3Schema of the rendered CRD `name`, for a JSON-schema validator."""
    crd = find(kustomize(), "CustomResourceDefinition", name)
    (version,) = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def schema_errors(schema: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    """What the schema refuses in `obj` (formats checked, as the API server does for ipv4)."""
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    return sorted(e.message for e in validator.iter_errors(obj))


IDENTITY = {"apiVersion": "velvet.io/v1alpha1", "kind": "VelvetIdentity", "metadata": {"name": "256"},
            "securityLabels": {"k8s:app": "web", "k8s:io.kubernetes.pod.namespace": "shop"}}
ENDPOINT = {"apiVersion": "velvet.io/v1alpha1", "kind": "VelvetEndpoint",
            "metadata": {"name": "web-0", "namespace": "shop"},
            "spec": {"podIP": "10.244.1.7", "identity": 256, "nodeName": "node-1"}}


def test_example_custom_resources_match_their_crd_schemas() -> None:
    """Test that a VelvetIdentity and a VelvetEndpoint as the agent writes them pass their CRD's schema."""
    assert schema_errors(crd_schema("velvetidentities.velvet.io"), IDENTITY) == []
    assert schema_errors(crd_schema("velvetendpoints.velvet.io"), ENDPOINT) == []


@pytest.mark.parametrize(("change", "error"), [
    ({"securityLabels": None}, "'securityLabels' is a required property"),
    ({"securityLabels": {"k8s:app": 1}}, "1 is not of type 'string'"),
    ({"securityLabels": "app=web"}, "'app=web' is not of type 'object'"),
])
def test_a_bad_identity_is_refused_by_its_schema(change: dict[str, Any], error: str) -> None:
    """Test that an identity without labels, or with labels that are not strings, is refused."""
    obj = {**IDENTITY, **change}
    obj = {k: v for k, v in obj.items() if v is not None}
    assert schema_errors(crd_schema("velvetidentities.velvet.io"), obj) == [error]


@pytest.mark.parametrize(("spec", "error"), [
    ({"podIP": "10.244.1.300"}, "'10.244.1.300' is not a 'ipv4'"),
    ({"podIP": "fd00::7"}, "'fd00::7' is not a 'ipv4'"),
    ({"identity": 0}, "0 is less than the minimum of 1"),
    ({"identity": "256"}, "'256' is not of type 'integer'"),
    ({"nodeName": None}, "'nodeName' is a required property"),
    ({"nodeName": ""}, "'' should be non-empty"),
])
def test_a_bad_endpoint_is_refused_by_its_schema(spec: dict[str, Any], error: str) -> None:
    """Test that an endpoint's IP must be IPv4, its identity an integer >= 1, and every field is given."""
    merged = {k: v for k, v in {**ENDPOINT["spec"], **spec}.items() if v is not None}  # type: ignore[dict-item]
    assert schema_errors(crd_schema("velvetendpoints.velvet.io"), {**ENDPOINT, "spec": merged}) == [error]


def test_an_identity_is_named_by_its_number_in_decimal() -> None:
    """Test that the CRD's validation rule (CEL, run by the API server) takes decimal numbers only; its
    regular expression is checked here with Python's, which agrees with RE2 on it."""
    crd = crd_schema("velvetidentities.velvet.io")
    (rule,) = crd["x-kubernetes-validations"]
    pattern = re.fullmatch(r"self\.metadata\.name\.matches\('(.*)'\)", rule["rule"])
    assert pattern is not None
    assert [n for n in ("1", "256", "65535", "0", "01", "-1", "web", "1a") if re.search(pattern[1], n)] == [
        "1", "256", "65535"]


TRACING = {"apiVersion": "velvet.io/v1alpha1", "kind": "VelvetTracingPolicyNamespaced",
           "metadata": {"name": "no-curl", "namespace": "shop"},
           "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "tracepoints": [
               {"subsystem": "syscalls", "event": "sys_enter_connect",
                "args": [{"index": 6, "type": "sockaddr"}],
                "selectors": [{"matchBinaries": [{"operator": "In", "values": ["/usr/bin/curl"]}],
                               "matchActions": [{"action": "Override", "argError": -1}]}]}]}}


def test_tracing_policies_keep_tetragons_fields_and_need_tracepoints() -> None:
    """Test that both tracing-policy CRDs take a Tetragon-shaped policy as the agent decodes it (the agent
    validates the rest), scoped as their kinds, and refuse one without tracepoints."""
    assert from_dict(TRACING).metadata.key == "shop/no-curl"
    for name, scope in (("velvettracingpolicies.velvet.io", "Cluster"),
                        ("velvettracingpoliciesnamespaced.velvet.io", "Namespaced")):
        assert find(kustomize(), "CustomResourceDefinition", name)["spec"]["scope"] == scope
        assert schema_errors(crd_schema(name), TRACING) == []
        assert schema_errors(crd_schema(name), {**TRACING, "spec": {"tracepoints": []}}) == [
            "[] should be non-empty"]


def test_the_printer_columns_show_what_the_datapath_uses() -> None:
    """Test that `kubectl get velvetendpoints` shows pod IP, identity and node, from the spec."""
    crd = find(kustomize(), "CustomResourceDefinition", "velvetendpoints.velvet.io")
    columns = {c["name"]: c["jsonPath"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns == {"Pod IP": ".spec.podIP", "Identity": ".spec.identity", "Node": ".spec.nodeName",
                       "Age": ".metadata.creationTimestamp"}


def test_the_cluster_role_grants_exactly_the_verbs_the_source_uses() -> None:
    """Test that the ClusterRole grants each verb the Kubernetes source calls, and nothing else."""
    expected = {(group, resource, verb) for (group, resource), verbs in SOURCE_VERBS.items()
                for verb in verbs}
    assert rbac_rules(kustomize()) == expected


def test_the_role_is_bound_to_the_agents_service_account() -> None:
    """Test that the binding gives the ClusterRole to the service account the DaemonSet runs as."""
    objects = kustomize()
    binding = find(objects, "ClusterRoleBinding", "velvet")
    pod = find(objects, "DaemonSet", "velvet")["spec"]["template"]["spec"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "velvet"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"],
                                    "namespace": "kube-system"}]


def test_the_daemonset_runs_on_every_node_and_updates_one_node_at_a_time() -> None:
    """Test that the agent tolerates every taint, is node-critical, and rolls one node at a time without a
    second agent on the node (the pinned datapath carries traffic meanwhile)."""
    ds = find(kustomize(), "DaemonSet", "velvet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["hostNetwork"] is True
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate",
                                            "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    assert {path: volumes[m["name"]] for path, m in mounts.items()} == {
        "/sys/fs/bpf": "/sys/fs/bpf", "/host/sys/fs/cgroup": "/sys/fs/cgroup", "/run/netns": "/run/netns",
        "/run/velvet": "/run/velvet", "/var/lib/velvet": "/var/lib/velvet"}
    assert mounts["/sys/fs/bpf"]["mountPropagation"] == "Bidirectional"


def test_render_with_default_options_gives_the_kustomize_objects(capsys: pytest.CaptureFixture[str]) -> None:
    """Test that `velvet install --render` prints the very objects kubectl kustomize renders, in the same
    order (the CRDs first), written out in full (no YAML anchors or aliases)."""
    assert main(["install", "--render"]) == 0
    out = capsys.readouterr().out
    assert [doc for doc in yaml.safe_load_all(out) if doc] == kustomize()
    assert not re.search(r"[&*]id\d+", out)


def test_render_applies_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    """Test that the options land in the ConfigMap, the images and the namespace, and that the result
    still validates (a new namespace comes first, labelled for privileged pods)."""
    image = "registry.example:5000/velvet/agent:1.2@sha256:" + "a" * 64
    assert main(["install", "--render", "--routing", "tunnel", "--pod-cidr-pool", "10.32.0.0/12",
                 "--policy-audit-mode", "--uplink", "ens5", "--api-server-host", "api.example",
                 "--image", image, "--namespace", "velvet-system"]) == 0
    objects = [doc for doc in yaml.safe_load_all(capsys.readouterr().out) if doc]
    assert strict_errors(objects) == []
    assert objects[0] == {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": "velvet-system", "labels": {"app.kubernetes.io/part-of": "velvet",
                                            "pod-security.kubernetes.io/enforce": "privileged"}}}
    config = find(objects, "ConfigMap", "velvet-config")
    assert config["data"] | {} == {**find(kustomize(), "ConfigMap", "velvet-config")["data"],
                                   "routing": "tunnel", "pod-cidr-pool": "10.32.0.0/12",
                                   "policy-audit-mode": "true", "uplink": "ens5",
                                   "api-server-host": "api.example", "api-server-port": "6443"}
    pod = find(objects, "DaemonSet", "velvet")["spec"]["template"]["spec"]
    assert {c["image"] for c in pod["initContainers"] + pod["containers"]} == {image}
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] in
            ("ConfigMap", "DaemonSet", "ServiceAccount")} == {"velvet-system"}
    assert find(objects, "ClusterRoleBinding", "velvet")["subjects"][0]["namespace"] == "velvet-system"


@pytest.mark.parametrize(("args", "line"), [
    (["--routing", "vxlan"], "--routing 'vxlan': expected native or tunnel"),
    (["--pod-cidr-pool", "10.244.0.1/16"], "--pod-cidr-pool '10.244.0.1/16': 10.244.0.1/16 has host bits"),
    (["--pod-cidr-pool", "fd00::/64"], "--pod-cidr-pool 'fd00::/64': expected an IPv4 CIDR such as 10.24"),
    (["--pod-cidr-pool", "10.244.0.0"], "--pod-cidr-pool '10.244.0.0': expected an IPv4 CIDR"),
    (["--uplink", "eth0/1"], "--uplink 'eth0/1': not an interface name"),
    (["--uplink", "a-very-long-ifname"], "--uplink 'a-very-long-ifname': not an interface name"),
    (["--api-server-host", "api_server"], "--api-server-host 'api_server': expected an IP address or a DNS"),
    (["--api-server-port", "6443"], "--api-server-port needs --api-server-host"),
    (["--api-server-host", "10.0.0.1", "--api-server-port", "https"],
     "--api-server-port 'https': expected a port, 1-65535"),
    (["--api-server-host", "api.example", "--api-server-port", "65536"],
     "--api-server-port '65536': expected a port, 1-65535"),
    (["--image", "Velvet Agent"], "--image 'Velvet Agent': not an image reference"),
    (["--namespace", "Kube_System"], "--namespace 'Kube_System': not a namespace name"),
])
def test_a_bad_option_is_one_line_and_exit_status_2(capsys: pytest.CaptureFixture[str], args: list[str],
                                                    line: str) -> None:
    """Test that a bad value prints one line naming the option and the value, and no manifest."""
    assert main(["install", "--render", *args]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"Error: {line}")


def test_install_without_render_says_what_to_do(capsys: pytest.CaptureFixture[str]) -> None:
    """Test that `velvet install` alone applies nothing and says to pipe --render to kubectl."""
    assert main(["install"]) == 2
    assert capsys.readouterr().err == ("Error: velvet install applies nothing itself: use --render and "
                                       "pipe it to `kubectl apply -f -`\n")


def test_an_installed_wheel_renders_the_same_objects(tmp_path: Path) -> None:
    """Test that the manifests ship as package data: a wheel built from the tree, installed elsewhere,
    renders the same objects without the repository."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        (tree / name).write_bytes((REPO / name).read_bytes())
    subprocess.run(["cp", "-R", str(REPO / "src"), str(tree / "src")], check=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"),
                    str(tree)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("velvet-*.whl")
    assert "velvet/install/manifests/daemonset.yaml" in zipfile.ZipFile(wheel).namelist()
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                    str(wheel)], check=True, capture_output=True)
    code = (f"import sys; sys.path.insert(0, {str(site)!r}); import velvet.install.render as r, yaml; "
            "assert r.__file__.startswith(sys.path[0]), r.__file__; "
            "print(r.to_yaml(r.render(r.InstallOptions())))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=tmp_path)
    assert sorted(yaml.safe_load_all(done.stdout), key=key) == sorted(kustomize(), key=key)
    assert render(InstallOptions()) == list(yaml.safe_load_all(done.stdout))
