"""Install `velvet-cni` for a container runtime: the plugin in its bin dir, a conflist in its conf dir."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from velvet.cni.spec import DEFAULT_MTU, PLUGIN_TYPE
from velvet.errors import VelvetError
from velvet.paths import AgentPaths

PACKAGE_HOME = Path(__file__).resolve().parents[2]
"""The directory holding the `velvet` package (src/ of a checkout, or site-packages)."""
CONF_VERSION = "1.0.0"
"""Version of the conflist: podman 4.3 refuses 1.1.0 results, so 1.0.0 (STATUS and GC are 1.1 only)."""


def conflist(sandbox: str, network: str, mtu: int = DEFAULT_MTU) -> dict[str, Any]:
    """The network config list that attaches a runtime's pods to sandbox `sandbox`'s node."""
    paths = AgentPaths(sandbox)
    return {"cniVersion": CONF_VERSION, "name": network,
            "plugins": [{"type": PLUGIN_TYPE, "socket": str(paths.socket),
                         "deleteQueue": str(paths.state_dir / "cni-delete-queue"), "mtu": mtu}]}


def plugin_script(python: str, home: Path = PACKAGE_HOME) -> str:
    """The plugin executable: this interpreter running velvet.cni.plugin from `home` (runtimes clear PATH).

    `-IS` (isolated, no site): the runtime's environment cannot redirect the interpreter, and the
    plugin does not pay for site-packages on every call; `home` is put on sys.path instead.
    """
    return (f"#!{python} -IS\nimport sys\nsys.path.insert(0, {str(home)!r})\n"
            "from velvet.cni.plugin import main\nsys.exit(main())\n")


def _write(path: Path, text: str, mode: int) -> None:
    """Write `text` to `path` atomically with `mode`."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    os.replace(tmp, path)


def install(conf_dir: Path, bin_dir: Path, sandbox: str, network: str = "velvet",
            mtu: int = DEFAULT_MTU) -> tuple[Path, Path]:
    """Write `<bin_dir>/velvet-cni` and `<conf_dir>/10-<network>.conflist` (pods get `mtu`); returns both
    paths."""
    try:
        conf_dir.mkdir(parents=True, exist_ok=True)
        bin_dir.mkdir(parents=True, exist_ok=True)
        plugin = bin_dir / PLUGIN_TYPE
        _write(plugin, plugin_script(sys.executable), 0o755)
        conf = conf_dir / f"10-{network}.conflist"
        _write(conf, json.dumps(conflist(sandbox, network, mtu), indent=2) + "\n", 0o644)
    except OSError as exc:
        raise VelvetError(f"cni install: {exc.filename or ''}: {exc.strerror}") from None
    return plugin, conf
