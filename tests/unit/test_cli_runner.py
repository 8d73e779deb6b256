"""Test the `velvet` command driver (demo, e2e harness, conformance runner, benchmarks) and the pod YAML."""

from __future__ import annotations

import pytest

from velvet.cli.runner import SandboxCli, unique_name, velvet_argv
from velvet.connectivity import manifests
from velvet.errors import CommandFailed
from velvet.model import Namespace, Pod
from velvet.model.codec import parse_documents
from velvet.paths import check_sandbox_name


def test_a_failing_command_raises_with_its_error_line() -> None:
    """Test that a checked command that exits non-zero raises CommandFailed naming it and its error."""
    cli = SandboxCli("unit")
    with pytest.raises(CommandFailed) as failed:
        cli.velvet("connectivity", "test", "--test", "no-such-test")
    assert failed.value.code == 1
    assert str(failed.value).startswith("`velvet connectivity test --test no-such-test` exited 1: "
                                        "Error: unknown test no-such-test; known: pod-to-pod")
    assert failed.value.stdout == ""


def test_an_unchecked_command_returns_its_outcome() -> None:
    """Test that check=False hands back the exit code and output instead of raising."""
    done = SandboxCli("unit").velvet("connectivity", "test", "--test", "no-such-test", check=False)
    assert done.returncode == 1
    assert done.stderr.startswith("Error: unknown test no-such-test")


def test_a_command_that_does_not_finish_raises() -> None:
    """Test that a command still running at its timeout is killed and reported as not finished."""
    with pytest.raises(CommandFailed, match="did not finish in time") as failed:
        SandboxCli("unit").velvet("connectivity", "test", "--list", timeout=0.001)
    assert failed.value.code is None


def test_argv_is_the_cli_of_this_interpreter_for_the_sandbox() -> None:
    """Test that every driver builds the same command line: this interpreter, `-m velvet.cli.main`."""
    assert SandboxCli("blue").argv("status")[1:] == ["-m", "velvet.cli.main", "--sandbox", "blue", "status"]
    assert SandboxCli("blue").argv("status") == velvet_argv("blue", "status")


def test_unique_names_are_fresh_sandbox_names() -> None:
    """Test that generated names are valid sandbox names and differ."""
    names = {unique_name("np") for _ in range(20)}
    assert len(names) == 20
    assert all(check_sandbox_name(n).startswith("np") and len(n) == 9 for n in names)


def test_echo_pod_is_a_valid_pod_with_its_ports_probe_and_labels() -> None:
    """Test that the echo pod YAML decodes to the pod the e2e tests and `connectivity test` rely on."""
    text = manifests.echo_pod("shop", "web-1", {"app": "web", "canary": "true"}, tcp=9000, udp=9001, grace=5)
    [pod] = parse_documents(text, "echo_pod")
    assert isinstance(pod, Pod)
    assert (pod.metadata.namespace, pod.metadata.name) == ("shop", "web-1")
    assert dict(pod.metadata.labels) == {"app": "web", "canary": "true"}
    assert pod.spec.termination_grace_period_seconds == 5
    [container] = pod.spec.containers
    assert container.command + container.args == ("python3", "-m", "velvet.sandbox.echo",
                                                  "--tcp", "9000", "--udp", "9001")
    assert [(p.name, p.container_port, p.protocol) for p in container.ports] == [
        ("tcp-echo", 9000, "TCP"), ("udp-echo", 9001, "UDP")]
    assert container.readiness_probe is not None
    assert container.readiness_probe.tcp_socket_port == 9000


def test_echo_pod_defaults_label_the_pod_by_name() -> None:
    """Test the defaults the e2e tests use: app=<name>, ports 8080/8081."""
    [pod] = parse_documents(manifests.echo_pod("ns", "client"), "echo_pod")
    assert isinstance(pod, Pod)
    assert dict(pod.metadata.labels) == {"app": "client"}
    assert [p.container_port for p in pod.spec.containers[0].ports] == [8080, 8081]


def test_connectivity_deployment_is_its_namespaces_echo_pods_and_services() -> None:
    """Test that `connectivity test` deploys valid objects: the audit namespace annotated, pods grace 0."""
    objects = parse_documents(manifests.deployment(), "deployment")
    namespaces = {o.metadata.name: o for o in objects if isinstance(o, Namespace)}
    pods = [o for o in objects if isinstance(o, Pod)]
    assert set(namespaces) == {manifests.NAMESPACE, manifests.AUDIT_NAMESPACE}
    audit = namespaces[manifests.AUDIT_NAMESPACE].metadata.annotations
    assert dict(audit) == {"velvet.io/policy-audit-mode": "true"}
    assert {f"{p.metadata.namespace}/{p.metadata.name}" for p in pods} == set(manifests.PODS)
    assert {p.spec.termination_grace_period_seconds for p in pods} == {0}
    assert len(objects) == 2 + len(manifests.PODS) + 3
