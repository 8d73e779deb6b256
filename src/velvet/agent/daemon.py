"""The agent daemon: start the agent behind its API (`launch`), run its loops until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from aiohttp import web

from velvet.agent import malloc
from velvet.agent.config import AgentConfig
from velvet.agent.handlers import AgentHandlers
from velvet.agent.node import Agent, Dirty
from velvet.agent.starting import StartingApi, keep_the_loop_responsive
from velvet.agent.tunnel import TUNNEL_DEVICE
from velvet.datapath.tables import ConntrackSweep
from velvet.errors import VelvetError
from velvet.observe.ui import http_app, listen_address, loopback_listener, serve_http
from velvet.paths import AgentPaths

if TYPE_CHECKING:
    from velvet.datapath.kernel import KernelDatapath
    from velvet.runtime.source import KernelProcSource

log = logging.getLogger("velvet.agent")
RECONCILE_DEBOUNCE_SECONDS = 0.02
# The kernel wakes a ring's reader only once a quarter of it is pending (ringbuf_submit_lazy): the
# readers drain this often, so a flow or process event is seen within it.
EVENT_POLL_SECONDS = 0.05
# After a read that drained a ring, the next waits this long: records keep coming while one batch is
# taken, and a reader that read again at once took ~50 records per read during a connect() loop,
# paying each read's fixed cost (~0.2 ms of numpy and Python) for every few connections (issue 14).
READ_SPACING_SECONDS = 0.01
EVENT_BATCH = 65536  # flow events per read
RING_BATCH = 4096  # records per ring per poll of the process and guard monitors (their default)
MAP_FILL_PERIOD_SECONDS = 5.0
EXPIRY_PERIOD_SECONDS = 1.0
FULL_GC_PERIOD_SECONDS = 600.0
SAVE_QUIET_SECONDS = 2.0  # the compiled services are saved once no pass ran for this long,
SAVE_SHARE = 0.01  # and for 100 times the last save's duration: saving takes at most 1 % of the worker
BIG_PASS_SERVICES = 1000  # a pass over this many services freed enough memory to give some back
# Removed backends' connections are flushed at most this often (kube-proxy's default minSyncPeriod): one
# walk of the conntrack map serves every pass of a burst, such as a rolling update's.
FLUSH_INTERVAL_SECONDS = 1.0
HOUSEKEEPING_NICE = 19  # the walks of the conntrack map: the passes and the API come first on a busy node
# The conntrack table is a hash without LRU eviction (no batched refills in the connect() path): the
# agent sweeps it of expired entries, first soon after the start (a restart may find many), then at an
# interval that follows the table's churn.
CT_SWEEP_MIN_SECONDS = 5.0
CT_SWEEP_MAX_SECONDS = 300.0
RESTART_PAUSE_SECONDS = 1.0  # before a loop that failed runs again: a loop failing at once does not spin


def release_memory(*, collect: bool = False) -> None:
    """Give the C heap's free pages back to the kernel (and first collect cycles, if `collect`).

    Loading 10k services or applying them frees tens of MiB of short-lived strings and documents that
    glibc keeps in its heap; trimming returns ~10 MiB of resident memory at 10k services. ctypes drops
    the GIL for the call, so the loop keeps answering.
    """
    if collect:
        gc.collect()
    malloc.trim()


async def collect_when_idle(handlers: AgentHandlers) -> None:
    """A full cyclic garbage collection now and then, on the state worker, when it has nothing to do."""
    while True:
        await asyncio.sleep(FULL_GC_PERIOD_SECONDS)
        if handlers.idle:
            await handlers.run(lambda: release_memory(collect=True))


def _service_keys(agent: Agent) -> set[str]:
    """Every service of the store, as `namespace/name` (on the state worker)."""
    return {f"{s.metadata.namespace}/{s.metadata.name}" for s in agent.store.objects("Service")}


async def reconcile_loop(handlers: AgentHandlers) -> None:
    """Follow the store and reconcile, on the state worker, whatever became dirty."""
    agent = handlers.agent
    watch = agent.store.watch()
    if agent.store.version > handlers.marked:  # changed before the watch began (a request came first)
        version = agent.store.version
        handlers.dirty.services |= await handlers.run(_service_keys, agent)
        handlers.dirty.policy = True
        handlers.marked = max(handlers.marked, version)
        handlers.wake.set()

    async def follow() -> None:
        async for delta in watch:
            handlers.mark(delta)

    follower = asyncio.create_task(follow())
    flush_wanted = asyncio.Event()
    flusher = asyncio.create_task(flush_stale(agent, flush_wanted))
    flush_wanted.set()  # what adopting the pinned maps at start made stale
    clock = asyncio.get_running_loop().time
    last_pass = -RECONCILE_DEBOUNCE_SECONDS
    try:
        while True:
            await handlers.wake.wait()
            if clock() - last_pass < RECONCILE_DEBOUNCE_SECONDS:  # a burst: gather it, unless a request waits
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(handlers.waited.wait(), RECONCILE_DEBOUNCE_SECONDS)
            handlers.wake.clear()
            handlers.waited.clear()
            dirty, version = handlers.take_dirty()
            try:
                retry = await handlers.run(agent.reconcile, dirty)
                agent.program_tracing()
            except Exception:
                log.exception("reconcile failed; will retry on the next change")
                retry = Dirty(policy=True)
            handlers.dirty.services |= retry.services
            handlers.dirty.policy |= retry.policy
            last_pass = clock()
            await handlers.passed(version)
            if agent.writer.stale:
                flush_wanted.set()
            if len(dirty.services) >= BIG_PASS_SERVICES:
                await handlers.run(release_memory)
    finally:
        follower.cancel()
        flusher.cancel()
        watch.close()


async def flush_stale(agent: Agent, wanted: asyncio.Event) -> None:
    """Flush the conntrack entries of backends the passes dropped, on a low-priority thread, when asked.

    The walk reads the whole conntrack map (it grows with the node's connections): neither the pass
    that dropped the backend nor the next one waits for it (the table writer keeps reused ids safe),
    and the passes of one second share a walk.
    """
    with ThreadPoolExecutor(1, "velvet-flush", initializer=lower_priority) as thread:
        loop = asyncio.get_running_loop()
        while True:
            await wanted.wait()
            await asyncio.sleep(FLUSH_INTERVAL_SECONDS)  # what the passes of the next second drop joins in
            wanted.clear()
            try:
                await loop.run_in_executor(thread, agent.flush_stale)
            except Exception:
                log.exception("flushing the connections of removed backends failed; tried again after a pass")


def lower_priority() -> None:
    """Run the calling thread at the lowest CPU priority (Linux nice values are per thread)."""
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HOUSEKEEPING_NICE)


def next_sweep(interval: float, sweep: ConntrackSweep, alive_before: int) -> float:
    """Seconds until the next conntrack sweep: at the churn of the last interval (entries that appeared
    in it), the table can fill at most half its free room before it. Without churn the interval doubles."""
    if sweep.capacity == 0:
        return CT_SWEEP_MAX_SECONDS
    appeared = sweep.deleted + max(0, sweep.alive - alive_before)
    if appeared == 0:
        return min(CT_SWEEP_MAX_SECONDS, 2 * interval)
    room = interval * (sweep.capacity - sweep.alive) / (2 * appeared)
    return max(CT_SWEEP_MIN_SECONDS, min(CT_SWEEP_MAX_SECONDS, room))


async def sweep_conntrack(agent: Agent) -> None:
    """Sweep the conntrack table of expired entries on a low-priority thread, at `next_sweep`'s pace."""
    interval, alive = CT_SWEEP_MIN_SECONDS, 0
    with ThreadPoolExecutor(1, "velvet-ct-sweep", initializer=lower_priority) as thread:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            try:
                sweep = await loop.run_in_executor(thread, agent.sweep_conntrack)
            except Exception:
                log.exception("sweeping the conntrack table failed; trying again in %.0f s", interval)
                continue
            interval, alive = next_sweep(interval, sweep, alive), sweep.alive


async def supervised(name: str, run: Callable[[], Awaitable[None]],
                     pause: float = RESTART_PAUSE_SECONDS) -> None:
    """Run one of the agent's loops for good: when it fails (or ends), the log says so with the traceback
    and it runs again after `pause`. A loop that died unseen would stop its work silently: a dead event
    reader, every flow from then on, while the agent still answered."""
    while True:
        try:
            await run()
        except Exception:
            log.exception("the agent's %s failed; it runs again in %.0f s", name, pause)
        else:
            log.error("the agent's %s ended; it runs again in %.0f s", name, pause)
        await asyncio.sleep(pause)


async def every(period: float, handlers: AgentHandlers, work: Callable[[], object]) -> None:
    """Run `work` on the state worker every `period` seconds; a failure is logged and tried again."""
    while True:
        try:
            await handlers.run(work)
        except Exception:
            log.exception("%s failed; trying again in %.0f s", work.__name__, period)
        await asyncio.sleep(period)


async def _readable(fds: list[int], seconds: float) -> None:
    """Wait until one of `fds` is readable or `seconds` passed.

    The fds are watched only meanwhile: epoll reports a ring's fd on every turn of the loop while records
    are pending, which spun the loop (~5,000 turns a second during a connect() loop) while a reader let
    records gather."""
    ready = asyncio.Event()
    loop = asyncio.get_running_loop()
    for fd in fds:
        loop.add_reader(fd, ready.set)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready.wait(), seconds)
    finally:
        for fd in fds:
            loop.remove_reader(fd)


async def event_loop(agent: Agent) -> None:
    """Move datapath events into the flow pipeline, woken by the ring's fd (or polling without one)."""
    fd = agent.datapath.events_fd()
    while True:
        await _readable([fd] if fd is not None else [], EVENT_POLL_SECONDS)
        while len(batch := agent.datapath.read_events(EVENT_BATCH)):
            agent.flows.ingest(batch)
            if len(batch) < EVENT_BATCH:  # drained: the next read waits for more records
                await asyncio.sleep(READ_SPACING_SECONDS)
                break


async def ring_loop(poll: Callable[[], int], filenos: list[int]) -> None:
    """Drain a reader of ring buffers (`poll`: how many records it took), woken by their fds (or polling
    without them); a burst is taken in batches with the loop's other work between them."""
    while True:
        if taken := poll():
            # a full batch leaves more to take at once; else the next read waits for more records
            await asyncio.sleep(0 if taken >= RING_BATCH else READ_SPACING_SECONDS)
            continue
        await _readable(filenos, EVENT_POLL_SECONDS)


async def save_when_quiet(handlers: AgentHandlers) -> None:
    """Save the compiled services (on the state worker) once no pass ran for SAVE_QUIET_SECONDS, nor for
    the last save's duration / SAVE_SHARE, and no state work waits, so that a restart need not compile
    them again. A save at 10k services holds the worker about 0.4 s and ~20 MiB for a moment (given back
    after it): a node whose services change often saves seldom, and a change costs no save of its own."""
    agent = handlers.agent
    seen, quiet_since, needed = -1.0, time.monotonic(), SAVE_QUIET_SECONDS
    while True:
        await asyncio.sleep(SAVE_QUIET_SECONDS)
        passes, now = agent.reconcile_stats["passes"], time.monotonic()
        if passes != seen:
            seen, quiet_since = passes, now
        if not agent.services.unsaved or not handlers.idle or now - quiet_since < needed:
            continue
        try:
            await handlers.run(agent.save_services)
        except Exception:
            log.exception("saving the compiled services failed; tried again after the next change")
        needed = max(SAVE_QUIET_SECONDS, (time.monotonic() - now) / SAVE_SHARE)
        await handlers.run(release_memory)  # the pickler's ~20 MiB at 10k services


async def _serve_http(handlers: AgentHandlers) -> web.AppRunner | None:
    """Serve /metrics and the service map on the configured loopback address (a failure is logged)."""
    agent = handlers.agent
    address = agent.config.metrics_address
    if not address:
        return None
    try:
        sock = loopback_listener(address, agent.config.metrics_netns)
    except (OSError, ValueError, VelvetError) as exc:
        log.error("not serving /metrics and the service map on %s: %s", address, exc)
        return None
    handlers.http_address = listen_address(sock)
    app = http_app(agent.metrics_registry, agent.flows.store, agent.flows.status)
    runner = await serve_http(app, sock)
    log.info("metrics on http://%s/metrics, service map on http://%s/ui/", handlers.http_address,
             handlers.http_address)
    return runner


async def follow_remote(handlers: AgentHandlers, changed: asyncio.Event) -> None:
    """When etcd's watch threads saw another writer's change, take it in on the state worker at once."""
    while True:
        await changed.wait()
        changed.clear()
        try:
            await handlers.run(handlers.agent.catch_up)
        except Exception:
            log.exception("taking in etcd's changes failed; the next change or tick tries again")


def _threadsafe_setter(loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> Callable[[], None]:
    """A callable for other threads that sets `event` on `loop` (nothing once the loop closed)."""
    def wake() -> None:
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(event.set)
    return wake


async def run_agent(agent: Agent, api: StartingApi, api_runner: web.AppRunner) -> None:
    """Start the agent behind the API `api` that `api_runner` serves, then serve until SIGTERM/SIGINT.

    Attachments and pins stay when it exits. The start (store, datapath adoption, first pass) runs off
    the loop, so `/v1/health` answers meanwhile; `/v1/status` answers once the first pass is done (the
    process monitor and the enforcer still "starting"), every other call once all of it is.
    """
    keep_the_loop_responsive()
    changed = asyncio.Event()
    loop = asyncio.get_running_loop()
    agent.on_remote_change(_threadsafe_setter(loop, changed))
    handlers: AgentHandlers | None = None
    tasks: list[asyncio.Task[None]] = []
    http_runner: web.AppRunner | None = None
    agent.started_at = api.started_at  # one start time in health, before and after (the kubelet compares)
    try:
        await loop.run_in_executor(None, agent.start_state)
        handlers = AgentHandlers(agent)
        api.serve_status(handlers)  # from the loaded state; the monitors still starting say so
        await loop.run_in_executor(None, agent.start_monitors)  # not on the state worker: status runs there
        await loop.run_in_executor(None, release_memory)  # what loading the store left
        api.ready(handlers)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("agent up: API on %s", agent.paths.socket)
        http_runner = await _serve_http(handlers)
        loops: dict[str, Callable[[], Awaitable[None]]] = {
            "reconcile loop": lambda: reconcile_loop(handlers),
            "flow event reader": lambda: event_loop(agent),
            "process event reader": lambda: ring_loop(agent.processes.poll, agent.processes.filenos()),
            "enforcer event reader": lambda: ring_loop(agent.guard.poll, agent.guard.filenos()),
            "garbage collection": lambda: collect_when_idle(handlers),
            "service saver": lambda: save_when_quiet(handlers),
            "remote change follower": lambda: follow_remote(handlers, changed),
            "conntrack sweeper": lambda: sweep_conntrack(agent),
            "node expiry": lambda: every(EXPIRY_PERIOD_SECONDS, handlers, agent.reconcile_nodes),
            "pod expiry": lambda: every(EXPIRY_PERIOD_SECONDS, handlers, agent.expire_terminating),
            "map fill refresh": lambda: every(MAP_FILL_PERIOD_SECONDS, handlers, agent.refresh_map_fill)}
        tasks = [asyncio.create_task(supervised(name, run), name=name) for name, run in loops.items()]
        await stop.wait()
    except BaseException as exc:
        api.failed(exc)
        raise
    finally:
        for task in tasks:
            task.cancel()
        agent.flows.close()
        await api_runner.cleanup()
        if http_runner is not None:
            await http_runner.cleanup()
        if handlers is not None:
            handlers.close()
            with contextlib.suppress(VelvetError):  # what the next agent adopts without compiling it again
                agent.save_services()
        with contextlib.suppress(VelvetError):  # a last chance for what the final pass dropped
            agent.flush_stale()
        agent.close()
        agent.datapath.close()


def build_agent(config: AgentConfig, fake_datapath: bool) -> Agent:
    """An agent with the kernel datapath (or the in-memory fake, for unprivileged trials), not started.

    The kernel's BPF objects are loaded over the pins on a thread while the agent loads its store (the
    verifier's time overlaps the store's decoding); `start` attaches them.
    """
    from velvet.datapath.fake import FakeDatapath
    from velvet.datapath.kernel import KernelDatapath
    from velvet.runtime.guard import KernelGuard
    from velvet.runtime.source import KernelProcSource

    if fake_datapath:
        return Agent(config, FakeDatapath())
    pin_dir = AgentPaths(config.sandbox, config.node_dir).pin_dir
    datapath = KernelDatapath(pin_dir, cgroup=config.cgroup, uplink=config.uplink,
                              tunnel=TUNNEL_DEVICE if config.routing == "tunnel" else None)
    processes = KernelProcSource(pin_dir, config.cgroup, count_syscalls=config.syscall_metrics)
    guard = None if config.cgroup is None else KernelGuard(pin_dir, config.cgroup)
    with ThreadPoolExecutor(1, thread_name_prefix="velvet-preload") as pool:
        loading = pool.submit(_preload, datapath, processes)
        agent = Agent(config, datapath, proc_source=processes, guard_source=guard)
        loading.result()
    return agent


def _preload(datapath: KernelDatapath, processes: KernelProcSource) -> None:
    """Load the BPF objects ahead of the start; a failure is left to `Agent.start`, which loads again and
    reports it where a failed load always was reported."""
    try:
        datapath.preload()
        processes.preload()
    except Exception as exc:  # reported by the start, which loads again
        log.debug("preloading the BPF objects failed (the start loads them again): %s", exc)
