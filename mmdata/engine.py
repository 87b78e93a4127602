"""The Dask engine: a stage applied shard by shard.

One task per input shard. A stage object is shipped with each task but set up (models loaded) once
per worker process, NeMo-Curator style. A shard is done when its `{id}_stats.json` exists in the
stage's output folder; that file is written last and atomically, so a re-run skips finished shards
and redoes any shard whose task died midway (its partial outputs are temp files or are overwritten
atomically). Failures are isolated per shard, retried by Dask, and reported with the shard and the
error; the other shards still finish.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from mmdata import fsio
from mmdata.config import ConfigError, EngineConfig
from mmdata.memory import keep_freed_memory

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
P = TypeVar("P")


@dataclass(frozen=True)
class Shard(Generic[P]):
    """A unit of work: its id (shared by every stage's outputs for it) and what it reads, as a
    typed payload the stage defines (`store.ShardFiles` for a shard set's tar and metadata)."""

    id: str
    input: P


class Stage:
    """Base of every shard stage. Subclasses write two methods: `setup` and `process`.

    `process(shard, out)` writes the shard's outputs under the folder `out` (atomically, through
    `mmdata.fsio`) and returns its stats: at least `count` (records in), `successes` (records
    kept) and `status_dict` (status -> count). Per-sample problems belong in those outputs as a
    status and error message, not in exceptions; an exception fails the whole shard (and is retried).
    """

    name = "stage"

    def setup(self) -> None:
        """Load models and other per-process state; runs once per worker."""

    def process(self, shard: Shard, out: str) -> dict:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """What decides this stage's outputs. Finished shards written under another fingerprint are
        stale: a re-run refuses to mix them with new ones unless told to overwrite. The default is
        the stage's whole state; stages narrow it to leave out settings that only change speed."""
        return digest(self.__dict__)

    def cache_token(self) -> str:
        """Identifies this stage's set-up state on a worker; equal tokens share one set-up."""
        return f"{type(self).__module__}.{type(self).__qualname__}-{digest(self.__dict__)}"


def digest(state: Any) -> str:
    import hashlib
    import json

    def plain(v: Any) -> Any:
        if hasattr(v, "model_dump"):  # a config model, less the fields that only set the pace
            pace = getattr(v, "PACE", frozenset())
            return {k: plain(getattr(v, k)) for k in type(v).model_fields if k not in pace}
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, list | tuple | set | frozenset):
            return [plain(x) for x in v]
        return v if isinstance(v, str | int | float | bool | type(None)) else repr(v)

    return hashlib.sha256(json.dumps(plain(state), sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# worker side

_ready: dict[str, Stage] = {}
_ready_lock = threading.Lock()


def _stage_on_worker(stage: Stage, token: str) -> Stage:
    with _ready_lock:
        if not _ready:  # first task in this process
            keep_freed_memory()
            _size_native_pools()
        if token not in _ready:
            stage.setup()
            _ready[token] = stage
            # What lives now (imports, models, set-up state) lives as long as the worker. Frozen, the
            # cyclic collector stops re-walking it on every full collection: about 6% of the
            # download stage's CPU, whose HTTP client allocates a lot of short-lived objects per image.
            gc.freeze()
        return _ready[token]


def _size_native_pools() -> None:
    """BLAS pools as big as this worker's environment says (Dask gives each worker
    OMP_NUM_THREADS=1 and friends). A forked worker inherits the pools its parent sized for the
    whole machine, and n_workers of them would oversubscribe every core. (OpenMP's count is per
    thread and fixed when the library loads: one reason `auto` does not fork once torch is in.)"""
    limit = os.environ.get("OMP_NUM_THREADS", "")
    if limit.isdigit() and int(limit) > 0:
        from threadpoolctl import threadpool_limits

        threadpool_limits(int(limit))


def stats_url(out: str, shard_id: str) -> str:
    return fsio.join(out, f"{shard_id}_stats.json")


def run_shard(stage: Stage, token: str, shard: Shard, out: str) -> dict:
    """Process one shard and mark it done. Runs on a worker (or inline)."""
    ready = _stage_on_worker(stage, token)
    started = time.time()
    stats = dict(ready.process(shard, out))
    for required in ("count", "successes", "status_dict"):
        if required not in stats:
            raise TypeError(f"{type(stage).__name__}.process returned stats without {required!r}")
    finished = time.time()
    stats.update(
        shard=shard.id,
        stage=stage.name,
        schema_version=SCHEMA_VERSION,
        started=started,
        finished=finished,
        duration=round(finished - started, 4),
    )
    fsio.write_json(stats_url(out, shard.id), stats)
    return stats


# ---------------------------------------------------------------------------------------------
# client side


def start_method(cfg: EngineConfig) -> str:
    """How LocalCluster workers start. Forking skips each worker's re-import of Python, Dask and the
    stages (most of a run's start-up on few cores). It is safe while this process holds no state a
    child cannot inherit: a CUDA context or an OpenMP thread pool, which only torch creates here, and
    macOS system frameworks."""
    if cfg.start_method != "auto":
        return cfg.start_method
    import sys

    return "fork" if sys.platform.startswith("linux") and "torch" not in sys.modules else "spawn"


@contextmanager
def cluster(cfg: EngineConfig) -> Iterator[Any]:
    """A Dask client: the given scheduler, else a LocalCluster shaped by `cfg`."""
    from distributed import Client, LocalCluster

    # the scheduler runs in this process and logs every connection at INFO
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if cfg.scheduler:
        with Client(cfg.scheduler, timeout="30s") as client:
            yield client
        return
    import dask

    with dask.config.set({"distributed.worker.profile.enabled": cfg.task_profiler}):
        # Forking is for start-up only. A worker restarted mid-run is spawned: by then this process
        # also runs progress bars and client threads, and a child could inherit one of their locks held.
        with dask.config.set({"distributed.worker.multiprocessing-method": start_method(cfg)}):
            local = LocalCluster(
                n_workers=cfg.n_workers,
                threads_per_worker=cfg.threads_per_worker,
                processes=cfg.processes,
                memory_limit=cfg.memory_limit,
                dashboard_address=":0",  # a fixed port would collide between concurrent runs
                silence_logs=logging.ERROR,
            )
        with local, Client(local) as client:
            yield client


@dataclass
class Report:
    stage: str
    out: str
    done: dict[str, dict] = field(default_factory=dict)  # shard -> stats, this run
    skipped: list[str] = field(default_factory=list)  # finished by an earlier run
    failed: dict[str, str] = field(default_factory=dict)  # shard -> error
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def totals(self) -> dict[str, int]:
        out: dict[str, int] = {"count": 0, "successes": 0}
        for stats in self.done.values():
            out["count"] += stats["count"]
            out["successes"] += stats["successes"]
            for status, n in stats["status_dict"].items():
                out[status] = out.get(status, 0) + n
        return out

    def summary(self) -> str:
        t = self.totals()
        lines = [
            (f"{self.stage}: {len(self.done)} shards done, {len(self.skipped)} already done, "
             f"{len(self.failed)} failed; {t['count']} records in, {t['successes']} kept "
             f"({self.duration:.1f}s) -> {self.out}")
        ]
        lines += [f"  shard {sid} FAILED: {err}" for sid, err in sorted(self.failed.items())]
        return "\n".join(lines)


class StageFailed(Exception):
    def __init__(self, report: Report):
        super().__init__(report.summary())
        self.report = report


def finished(out: str) -> set[str]:
    """Ids of the shards whose stats file exists under `out`."""
    fs, path = fsio.fs_path(out)
    if not fs.exists(path):
        return set()
    names = (p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    return {n[: -len("_stats.json")] for n in names if n.endswith("_stats.json")}


def map_shards(
    stage: Stage,
    shards: list[Shard],
    out: str,
    engine: EngineConfig | None = None,
    *,
    client: Any = None,
    overwrite: bool = False,
) -> Report:
    """Apply `stage` to every shard not yet finished under `out`; returns what happened."""
    engine = engine or EngineConfig()
    report = Report(stage.name, out)
    t0 = time.time()
    ids = [s.id for s in shards]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{stage.name}: duplicate shard ids in input")
    done_before = set() if overwrite else finished(out)
    _check_fingerprint(stage, out, done_before)
    todo = [s for s in shards if s.id not in done_before]
    report.skipped = sorted(s.id for s in shards if s.id in done_before)
    _sweep_temp(out, [s.id for s in todo])
    if todo:
        if client is None:
            with cluster(engine) as c:
                _submit_all(c, stage, todo, out, engine, report)
        else:
            _submit_all(client, stage, todo, out, engine, report)
    report.duration = time.time() - t0
    return report


FINGERPRINT = "_stage.json"


def _check_fingerprint(stage: Stage, out: str, done: set[str]) -> None:
    """Refuse to resume on top of shards written with other settings; record this run's."""
    url = fsio.join(out, FINGERPRINT)
    mine = stage.fingerprint()
    if done and fsio.exists(url):
        theirs = fsio.read_json(url).get("fingerprint")
        if theirs != mine:
            raise ConfigError(
                f"{stage.name}: the recipe changed since the {len(done)} finished shards under {out} were written "
                f"(fingerprint {theirs} -> {mine}); rerun with --overwrite to redo them, or write elsewhere"
            )
        return
    fsio.write_json(url, {"stage": stage.name, "fingerprint": mine})


def _sweep_temp(out: str, ids: list[str]) -> None:
    """Remove temp files a killed run left for shards about to be redone."""
    for sid in ids:
        fsio.sweep_temp(out, sid)


def _submit_all(client, stage: Stage, todo: list[Shard], out: str, engine: EngineConfig, report: Report):
    from distributed import as_completed
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    token = stage.cache_token()
    futures = {
        client.submit(
            run_shard, stage, token, shard, out, key=f"{stage.name}-{shard.id}-{token[-8:]}", retries=engine.retries, pure=False
        ): shard.id
        for shard in todo
    }
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        disable=not engine.progress, transient=False,
    )
    with progress:
        bar_shards = progress.add_task(f"{stage.name} shards", total=len(todo))
        bar_samples = progress.add_task(f"{stage.name} samples", total=None)
        for fut in as_completed(futures, raise_errors=False):
            sid = futures[fut]
            if fut.status == "finished":
                stats = fut.result()
                report.done[sid] = stats
                progress.advance(bar_samples, stats["count"])
            else:
                exc = fut.exception()
                tb = "".join(traceback.format_tb(fut.traceback()))[-2000:] if fut.traceback() else ""
                report.failed[sid] = f"{type(exc).__name__}: {exc}"
                log.error("%s: shard %s failed after %d attempts: %s\n%s", stage.name, sid, engine.retries + 1, exc, tb)
            progress.advance(bar_shards)
            fut.release()
