"""The one exception tree of Velvet; every error a user can see is a `VelvetError`.

VelvetError
├── DatapathError              something went wrong between us and the kernel
│   ├── BuildError             clang failed on a BPF source (carries the compiler output)
│   ├── VerifierError          the kernel refused a program (carries the verifier log)
│   ├── NotSupported           a kernel feature is missing (names it and the minimum kernel)
│   ├── MapFull                a map has no room for the entries asked for
│   └── KeyNotFound            a map lookup or delete found no such key
├── InvalidManifest            a manifest failed validation (file, document, field, reason)
│   └── InvalidReport          a node runtime report (pod status, CNI endpoint) failed validation
├── InvalidRule                a runtime enforcement rule cannot be programmed (which rule, why)
├── SandboxError               the sandbox could not create or remove something
├── NeedsRoot                  the command needs root and runs as another user
├── BadRequest                 a request to the agent is malformed (API answers 400)
├── NotFound                   a named object or resource does not exist (API answers 404)
├── AgentUnavailable           no agent answers on the API socket
├── ApiError                   the agent answered with an error
└── CommandFailed              a `velvet` command run as a subprocess failed (carries its output)
"""

from __future__ import annotations


class VelvetError(Exception):
    """Root of every error Velvet raises on purpose."""


class DatapathError(VelvetError):
    """A kernel operation failed; `errno` is kept when there is one."""

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


class BuildError(DatapathError):
    """clang could not compile a BPF source; `output` is what it printed."""

    def __init__(self, source: str, output: str) -> None:
        super().__init__(f"compiling {source} failed:\n{output}")
        self.source = source
        self.output = output


class VerifierError(DatapathError):
    """The kernel verifier rejected a program; `log` is its complete log."""

    def __init__(self, obj: str, log: str, errno: int = 0) -> None:
        super().__init__(f"the kernel refused to load {obj} (verifier log below):\n{log}", errno)
        self.obj = obj
        self.log = log


class NotSupported(DatapathError):
    """A kernel feature Velvet needs is missing."""

    def __init__(self, feature: str, min_kernel: str, disables: str = "") -> None:
        what = f" ({disables} disabled)" if disables else ""
        super().__init__(f"{feature} is not supported by this kernel (needs Linux >= {min_kernel}){what}")
        self.feature = feature
        self.min_kernel = min_kernel


class MapFull(DatapathError):
    """A map cannot take the entries asked for."""

    def __init__(self, map_name: str, capacity: int, wanted: int) -> None:
        super().__init__(f"map {map_name} is full: {wanted} entries wanted, capacity {capacity}")
        self.map_name = map_name
        self.capacity = capacity
        self.wanted = wanted


class KeyNotFound(DatapathError):
    """The key is not in the map."""


class InvalidManifest(VelvetError):
    """A manifest document is invalid; nothing of the input it came with was applied."""

    def __init__(self, path: str, document: int, field: str, reason: str) -> None:
        super().__init__(f"{path}: document {document}: {field}: {reason}")
        self.path = path
        self.document = document
        self.field = field
        self.reason = reason


class InvalidReport(InvalidManifest):
    """A report of the node runtime (kubelet pod status, CNI endpoint) is invalid; none of it was stored."""

    def __init__(self, where: str, field: str, reason: str) -> None:
        VelvetError.__init__(self, f"{where}: {field}: {reason}")
        self.path = where
        self.document = 0
        self.field = field
        self.reason = reason


class InvalidRule(VelvetError):
    """A runtime enforcement rule (velvet.runtime.guard_rules) cannot be programmed; none of its set was."""

    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(f"{rule}: {reason}")
        self.rule = rule
        self.reason = reason


class SandboxError(VelvetError):
    """The sandbox could not create, inspect or remove one of its parts."""


class NeedsRoot(VelvetError):
    """The command needs root (namespaces, cgroups, BPF, the root-only API socket); `why` says for what."""

    def __init__(self, why: str) -> None:
        super().__init__(f"velvet must run as root: {why}")
        self.why = why


class BadRequest(VelvetError):
    """A request to the agent is malformed: not JSON, the wrong shape, a missing or mistyped field."""


class NotFound(VelvetError):
    """A named object or resource does not exist."""


class AgentUnavailable(VelvetError):
    """No agent answers on the API socket."""


class ApiError(VelvetError):
    """The agent answered a request with an error."""


class CommandFailed(VelvetError):
    """A `velvet` command run as a subprocess failed or did not finish; `stdout`/`stderr` are its output."""

    def __init__(self, argv: tuple[str, ...], code: int | None, stdout: str, stderr: str) -> None:
        outcome = f"exited {code}" if code is not None else "did not finish in time"
        detail = stderr.strip() or stdout.strip()
        super().__init__(f"`{' '.join(argv)}` {outcome}" + (f": {detail}" if detail else ""))
        self.code = code
        self.stdout = stdout
        self.stderr = stderr
