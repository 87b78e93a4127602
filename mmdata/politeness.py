"""Per-host politeness that holds for the whole run: one budget per host shared by every task.

Each task (one `Fetcher`, one asyncio loop) asks the run's coordinator for slots on the hosts it
has URLs for; the coordinator (`HostBudget`, a Dask scheduler plugin: on a LocalCluster and on
`--scheduler` alike, the one place every worker already talks to) shares each host's `per_host`
slots among the tasks that want it and keeps its pauses:

- **Cap.** The slots of a host are split fairly between the tasks that want them (water-filling
  on what each can use). A task whose share shrinks counts at its old share until it has been told
  (its next call says so) and then at its requests still in flight until they end; only slots
  counted free are granted, so the requests in flight to a host, over the whole cluster, never
  exceed `per_host`.
- **Pauses.** A 429/503 with Retry-After pauses the host in the task that got it at once, and in
  every other task that fetches the host one round trip later (the coordinator wakes them). A task
  gets slots and the host's pause in the same answer, so a task that had no slot cannot start
  during a pause; with `per_host: 1` no request reaches a paused host at all. With more slots,
  requests other tasks had already started can still arrive (at most `per_host - 1`).
- **Rate.** `per_host_rate` requests/s per host, split like the slots (a task's share is the rate
  times its share of the slots).

Cost: one round trip per task when it meets new hosts (all of them in one message), when a share
or pause changes, and a heartbeat every `HEARTBEAT` seconds; nothing per request. A task that dies
loses its slots after `LEASE` seconds without a heartbeat.

Outside a Dask worker (`fetch_all` in a script) the limits are those of the one process.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

HANDLER = "mmdata_hosts"
PLUGIN = "mmdata-hosts"
HEARTBEAT = 1.0  # seconds a task's standing call waits for news before it comes back anyway
LEASE = 15.0  # seconds without a call after which a task's slots go back to the others
CALL_TIMEOUT = 30.0  # seconds a call may take beyond its wait before the task goes on alone


# ---------------------------------------------------------------------------------------------
# the task side: one per Fetcher


class Host:
    """One host as one task sees it: the slots it may use, its requests in flight, its pause."""

    __slots__ = ("inflight", "interval", "limit", "name", "next_start", "not_before", "waiters", "waiting", "woken")

    def __init__(self, name: str, limit: int, interval: float = 0.0):
        self.name, self.limit, self.interval = name, limit, interval
        self.inflight = 0
        self.waiting = 0
        self.woken = 0  # waiters woken that have not looked again yet
        self.not_before = 0.0  # loop time: no request starts earlier (Retry-After)
        self.next_start = 0.0  # loop time: the rate's next free start
        self.waiters: deque[asyncio.Future] = deque()

    def wake(self) -> None:
        """Wake as many waiters as there are free slots (not all: a host can have thousands of
        URLs waiting, and waking them all at every release is quadratic)."""
        free = self.limit - self.inflight - self.woken
        while self.waiters and free > 0:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                self.woken += 1
                free -= 1


class Hosts:
    """The hosts of one task, limited locally (`per_host`, `rate`), or shared through a
    coordinator when `link` is given (see `SharedHosts`)."""

    def __init__(self, per_host: int, rate: float | None = None):
        self.per_host, self.rate = per_host, rate
        self.hosts: dict[str, Host] = {}

    def _new(self, name: str) -> Host:
        return Host(name, self.per_host, 1.0 / self.rate if self.rate else 0.0)

    def get(self, name: str) -> Host:
        host = self.hosts.get(name)
        if host is None:
            host = self.hosts[name] = self._new(name)
        return host

    async def acquire(self, host: Host) -> None:
        """A slot on `host`, once its pause and its rate allow a new request."""
        loop = asyncio.get_running_loop()
        host.waiting += 1
        self.changed(host)
        try:
            while True:
                if host.inflight >= host.limit:
                    fut = loop.create_future()
                    host.waiters.append(fut)
                    try:
                        await fut
                    finally:
                        if fut.done() and not fut.cancelled():
                            host.woken -= 1
                    continue
                wait = max(host.not_before, host.next_start) - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                break
        finally:
            host.waiting -= 1
        host.inflight += 1
        if host.interval:
            host.next_start = max(loop.time(), host.next_start) + host.interval

    def release(self, host: Host) -> None:
        host.inflight -= 1
        if host.inflight < host.limit:
            host.wake()
        self.changed(host)

    def pause(self, host: Host, seconds: float) -> None:
        """Retry-After: nobody here asks `host` for `seconds` (and, shared, nobody anywhere)."""
        host.not_before = max(host.not_before, asyncio.get_running_loop().time() + seconds)
        self.paused(host, seconds)

    # hooks for the shared variant
    def changed(self, host: Host) -> None:
        pass

    def paused(self, host: Host, seconds: float) -> None:
        pass

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


class SharedHosts(Hosts):
    """Hosts whose slots, pauses and rate come from the run's `HostBudget`.

    `call(**report)` is an awaitable RPC to the coordinator (see `worker_link`). A host starts
    with no slot; the first request to it makes the task ask (together with whatever else changed
    since the last call), and a standing call brings back every later change."""

    def __init__(self, per_host: int, rate: float | None, call):
        super().__init__(per_host, rate)
        self.call = call
        self.client = uuid.uuid4().hex
        self.seen = 0  # the coordinator's last answer applied (its sequence number)
        self.pauses: dict[str, float] = {}  # host -> seconds, to report
        self.dirty = asyncio.Event()
        self.reported: dict[str, tuple[int, int]] = {}  # host -> (want, inflight) last sent
        self.task: asyncio.Task | None = None
        self.closed = False
        self.calls = 0

    def _new(self, name: str) -> Host:
        return Host(name, 0) if not self.closed else super()._new(name)

    def _state(self, host: Host) -> tuple[int, int]:
        return min(self.per_host, host.waiting + host.inflight), host.inflight

    def changed(self, host: Host) -> None:
        want, inflight = self._state(host)
        old = self.reported.get(host.name)
        # tell the coordinator what it needs to move slots: a host wanted beyond its share, a host
        # no longer wanted, or requests over a shrunken share that have ended
        if old is None or (want > host.limit and old[0] <= host.limit) or (want == 0 and old[0] > 0) \
                or (inflight < old[1] and old[1] > host.limit):
            self.dirty.set()

    def paused(self, host: Host, seconds: float) -> None:
        self.pauses[host.name] = max(self.pauses.get(host.name, 0.0), seconds)
        self.dirty.set()

    def _report(self) -> dict:
        state = {}
        for name, host in list(self.hosts.items()):
            want, inflight = self._state(host)
            if want or inflight or host.limit or name not in self.reported or self.reported[name] != (0, 0):
                state[name] = [want, inflight]
            if not (want or inflight or host.limit):
                del self.hosts[name]  # forgotten here; the coordinator forgets it on this report
        self.reported = {h: tuple(v) for h, v in state.items() if v != [0, 0]}
        pauses, self.pauses = self.pauses, {}
        return {"client": self.client, "per_host": self.per_host, "rate": self.rate, "hosts": state,
                "pauses": pauses, "seen": self.seen}

    def _apply(self, reply: dict) -> None:
        if reply["seq"] <= self.seen:
            return
        self.seen = reply["seq"]
        now = asyncio.get_running_loop().time()
        for name, (limit, pause, rate) in reply["hosts"].items():
            host = self.hosts.get(name)
            if host is None:
                continue
            host.not_before = max(host.not_before, now + pause)
            host.interval = 1.0 / rate if rate else 0.0
            if limit != host.limit:
                host.limit = limit
                host.wake()
                self.changed(host)

    async def _exchange(self, wait: float) -> None:
        self.calls += 1
        # bounded: a scheduler that stops answering turns this task to its own limits, never hangs it
        self._apply(await asyncio.wait_for(self.call(**self._report(), wait=wait), wait + CALL_TIMEOUT))

    async def _run(self) -> None:
        try:
            await self._loop()
        except Exception as e:  # noqa: BLE001 - no coordinator: go on with this task's own limits
            log.warning("host budget unreachable (%s: %s); per-host limits now hold per task", type(e).__name__, e)
            self.closed = True
            for host in self.hosts.values():
                host.limit, host.interval = self.per_host, 1.0 / self.rate if self.rate else 0.0
                host.wake()

    async def _loop(self) -> None:
        standing: asyncio.Task | None = None
        while not self.closed:
            if standing is None or standing.done():
                if standing is not None:
                    standing.result()
                standing = asyncio.ensure_future(self._exchange(HEARTBEAT))
            dirty = asyncio.ensure_future(self.dirty.wait())
            await asyncio.wait([standing, dirty], return_when=asyncio.FIRST_COMPLETED)
            dirty.cancel()
            if self.dirty.is_set() and not self.closed:
                self.dirty.clear()
                await self._exchange(0.0)  # news to tell now, beside the standing call
        if standing is not None:
            standing.cancel()

    async def start(self) -> None:
        self.task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        self.closed = True
        self.dirty.set()
        if self.task is not None:
            try:
                await self.task
            except Exception as e:  # noqa: BLE001 - the coordinator being gone must not fail the shard
                log.warning("host budget: %s", e)
        try:
            await asyncio.wait_for(self.call(client=self.client, per_host=self.per_host, rate=self.rate, hosts={},
                                             pauses={}, seen=self.seen, wait=0.0, bye=True), CALL_TIMEOUT)
        except Exception as e:  # noqa: BLE001
            log.warning("host budget: could not return slots: %s", e)


# ---------------------------------------------------------------------------------------------
# the coordinator: a scheduler plugin


@dataclass
class _Client:
    per_host: int
    rate: float | None
    seen: float = 0.0  # monotonic time of the last call
    seq: int = 0
    news: asyncio.Event = field(default_factory=asyncio.Event)
    hosts: set[str] = field(default_factory=set)


@dataclass
class _HostBudget:
    want: dict[str, int] = field(default_factory=dict)  # client -> slots it could use
    inflight: dict[str, int] = field(default_factory=dict)  # client -> as last reported
    limit: dict[str, int] = field(default_factory=dict)  # client -> slots granted
    # a client told of a smaller share may start requests up to its old one until its answer has
    # reached it: counted at the old share until it shows (`seen`) it has the new one
    believed: dict[str, int] = field(default_factory=dict)  # client -> the share it may still act on
    ack: dict[str, int] = field(default_factory=dict)  # client -> the answer (seq) that tells it
    until: float = 0.0  # monotonic: paused until


try:
    from distributed.diagnostics.plugin import SchedulerPlugin
except ImportError:  # pragma: no cover - distributed is a dependency
    SchedulerPlugin = object


class HostBudget(SchedulerPlugin):
    """The run's per-host budget, kept on the Dask scheduler (handler `mmdata_hosts`)."""

    idempotent = True
    name = PLUGIN

    def __init__(self):
        self.hosts: dict[str, _HostBudget] = {}
        self.clients: dict[str, _Client] = {}
        self._seq = itertools.count(1)
        self.calls = 0

    async def start(self, scheduler) -> None:
        scheduler.handlers[HANDLER] = self.handle

    # -- one call

    async def handle(self, client: str, per_host: int, rate: float | None, hosts: dict, pauses: dict, seen: int,
                     wait: float, bye: bool = False) -> dict:
        self.calls += 1
        now = time.monotonic()
        self._expire(now)
        c = self.clients.get(client)
        if c is None:
            c = self.clients[client] = _Client(per_host, rate)
        c.seen, c.per_host, c.rate = now, per_host, rate
        touched = set(pauses)
        for name, secs in pauses.items():
            h = self.hosts.setdefault(name, _HostBudget())
            h.until = max(h.until, now + float(secs))
        if bye:
            hosts = {name: [0, 0] for name in c.hosts}
        for name, (want, inflight) in hosts.items():
            h = self.hosts.setdefault(name, _HostBudget())
            h.want[client], h.inflight[client] = int(want), int(inflight)
            h.limit.setdefault(client, 0)
            if seen >= h.ack.get(client, 0) or bye:
                h.believed[client] = h.limit[client]
            c.hosts.add(name)
            touched.add(name)
        for name in touched:
            self._rebalance(name, now, paused=name in pauses)
        if bye:
            self.clients.pop(client, None)
            return {"seq": 0, "hosts": {}}
        if wait > 0 and c.seq <= seen:
            c.news.clear()
            try:
                await asyncio.wait_for(c.news.wait(), wait)
            except TimeoutError:
                pass
        return self._answer(c, client)

    def _answer(self, c: _Client, client: str) -> dict:
        now = time.monotonic()
        out = {}
        for name in c.hosts:
            h = self.hosts.get(name)
            if h is None:
                continue
            limit = h.limit.get(client, 0)
            cap = self._cap(h)
            rate = c.rate * limit / cap if c.rate and cap else None
            out[name] = [limit, max(0.0, h.until - now), rate]
        return {"seq": c.seq, "hosts": out}

    # -- bookkeeping

    def _cap(self, h: _HostBudget) -> int:
        caps = [self.clients[c].per_host for c in h.want if c in self.clients]
        return min(caps) if caps else 0

    def _notify(self, client: str) -> None:
        c = self.clients.get(client)
        if c is not None:
            c.seq = next(self._seq)
            c.news.set()

    def _rebalance(self, name: str, now: float, paused: bool = False) -> None:
        """Share the host's slots: water-filling on wants, current holders last (so with fewer
        slots than tasks, a holder keeps its slot rather than slots moving back and forth).
        Shares shrink at once; they grow only into slots nobody uses, a request in flight
        counting as used until it is reported ended."""
        h = self.hosts[name]
        for client in [c for c in h.want if not (h.want[c] or h.inflight[c] or h.limit[c] or h.believed.get(c))
                       or c not in self.clients]:
            for d in (h.want, h.inflight, h.limit, h.believed, h.ack):
                d.pop(client, None)
            if client in self.clients:
                self.clients[client].hosts.discard(name)
        if not h.want and h.until <= now:
            del self.hosts[name]
            return
        cap = self._cap(h)
        order = sorted(h.want, key=lambda c: (h.limit[c] > 0, h.want[c]))
        target, left = {}, cap
        for i, client in enumerate(order):
            target[client] = min(h.want[client], left // (len(order) - i))
            left -= target[client]
        changed = {c for c in order if paused}
        shrunk = set()
        for client in order:  # shrink first
            if target[client] < h.limit[client]:
                h.believed[client] = max(h.believed.get(client, 0), h.limit[client])
                h.limit[client] = target[client]
                changed.add(client)
                shrunk.add(client)
        used = sum(max(h.limit[c], h.inflight[c], h.believed.get(c, 0)) for c in order)
        for client in order:  # then grow into what is free (a task's own requests in flight are in its share)
            usage = max(h.limit[client], h.inflight[client], h.believed.get(client, 0))
            new = min(target[client], usage + cap - used)
            if new > h.limit[client]:
                h.limit[client] = new
                used += max(new, usage) - usage
                changed.add(client)
        for client in changed:
            self._notify(client)
            if client in shrunk:
                h.ack[client] = self.clients[client].seq if client in self.clients else 0

    def _expire(self, now: float) -> None:
        for client, c in list(self.clients.items()):
            if now - c.seen > LEASE:
                log.warning("host budget: task %s silent for %.0fs; its slots go to the others", client[:8], now - c.seen)
                del self.clients[client]
                for name in list(c.hosts):
                    if name in self.hosts:
                        self._rebalance(name, now)


# ---------------------------------------------------------------------------------------------
# wiring: from a task on a Dask worker to the scheduler's plugin

_registered: set[str] = set()


def worker_link():
    """An awaitable `call(**report)` to the run's coordinator, for a task running on a Dask worker
    (registering the plugin on its scheduler once per worker process); None elsewhere."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    worker_loop = worker.loop.asyncio_loop

    def on_worker(coro):
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, worker_loop))

    address = worker.scheduler.address
    if address not in _registered:
        from distributed.protocol.pickle import dumps

        async def register():
            await worker.scheduler.register_scheduler_plugin(plugin=dumps(HostBudget()), name=PLUGIN, idempotent=True)

        try:
            asyncio.run_coroutine_threadsafe(register(), worker_loop).result(timeout=30)
        except Exception as e:  # noqa: BLE001 - e.g. a scheduler that cannot import mmdata
            log.warning("per-host limits hold per task only: the scheduler refused the host budget (%s: %s)",
                        type(e).__name__, e)
            return None
        _registered.add(address)

    async def call(**report) -> dict:
        return await on_worker(getattr(worker.scheduler, HANDLER)(**report))

    return call
