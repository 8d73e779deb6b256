"""The service compiler's state saved beside the agent's store, so a restart need not compile every service.

At 10,000 services compiling every service again took 0.4-0.6 s of a restarted agent's start, and
loading what its previous life compiled about 0.18 s: a pickle in which the Services and
EndpointSlices compiled from are named (kind, namespace, name, uid, resourceVersion) and taken from
the store on load, never copied. The saved state is used only when all of these hold, otherwise every
service is compiled as before:

- it was written by the same compiler code and Python (a digest of both) with the same settings;
- every object it compiled from is still in the store (one changed since is compiled again);
- what it programs is exactly what the pinned maps hold.

The file is 0600 in the agent's private state directory: loading a pickle runs what it names, and only
the agent writes there.
"""

from __future__ import annotations

import io
import logging
import pickle
from functools import cache
from pathlib import Path

from velvet.control import maglev
from velvet.control import services as compiler_module
from velvet.control.services import ServiceCompiler
from velvet.datapath import structs, tables
from velvet.datapath.tables import LbState
from velvet.durable import StorageError, code_digest, write_atomic
from velvet.model import EndpointSlice, Service
from velvet.sources.informer import ObjectCache

SAVED_FILE = "services.compiled"
_DIGEST_BYTES = 32

log = logging.getLogger("velvet.controllers.services")


@cache
def _code_digest() -> bytes:
    """What the saved state's layout and meaning depend on: the compiler's modules, Velvet, Python."""
    return code_digest(Path(str(module.__file__)) for module in (compiler_module, maglev, tables, structs))


class _Saver(pickle.Pickler):
    """Pickles the compiler with its Services and EndpointSlices as references to the store's objects."""

    def persistent_id(self, obj: object) -> tuple[str, str, str, str, int] | None:
        if isinstance(obj, Service | EndpointSlice):
            meta = obj.metadata
            return type(obj).__name__, meta.namespace, meta.name, meta.uid, meta.resource_version
        return None


class _Gone(Exception):
    """An object the saved state compiled from is no longer in the store."""


class _Loader(pickle.Unpickler):
    """Unpickles a saved compiler, taking its objects from the store; notes the services that changed."""

    def __init__(self, data: bytes, store: ObjectCache) -> None:
        super().__init__(io.BytesIO(data))
        self._store = store
        self.changed: set[str] = set()  # service keys whose Service or a slice changed since saved

    def persistent_load(self, pid: tuple[str, str, str, str, int]) -> object:
        kind, namespace, name, uid, version = pid
        obj = self._store.find(kind, namespace, name)
        if obj is None:
            raise _Gone(f"{kind} {namespace}/{name}")
        if (obj.metadata.uid, obj.metadata.resource_version) != (uid, version):
            service = obj.service_name if isinstance(obj, EndpointSlice) else obj.metadata.name
            self.changed.add(f"{namespace}/{service}")
        return obj


def save(path: Path, compiler: ServiceCompiler) -> None:
    """Write the compiler's state to `path` (atomically); `StorageError` when it cannot be written."""
    out = io.BytesIO()
    out.write(_code_digest())
    _Saver(out, protocol=pickle.HIGHEST_PROTOCOL).dump(compiler)
    write_atomic(path, out.getvalue())


def load(path: Path, fresh: ServiceCompiler, store: ObjectCache, pinned: LbState
         ) -> tuple[ServiceCompiler, set[str]] | None:
    """The compiler saved at `path` and the services changed since, or None when it cannot be used.

    `fresh` is a compiler with this agent's settings; `pinned` what the maps hold now. Why a saved state
    is not used is logged.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        log.warning("%s", StorageError(path, "read the saved services", err))
        return None
    if data[:_DIGEST_BYTES] != _code_digest():
        log.info("%s was saved by another Velvet: compiling every service", path)
        return None
    loader = _Loader(data[_DIGEST_BYTES:], store)
    try:
        saved = loader.load()
    except _Gone as gone:
        log.info("%s: %s was deleted since: compiling every service", path, gone)
        return None
    except Exception as err:  # a damaged file: compiled again, as without one
        log.warning("%s cannot be read (%r): compiling every service", path, err)
        return None
    if not isinstance(saved, ServiceCompiler) or saved.settings() != fresh.settings():
        log.info("%s was compiled with other settings: compiling every service", path)
        return None
    if saved.desired() != pinned:
        log.info("%s does not match the pinned maps: compiling every service", path)
        return None
    return saved, loader.changed
