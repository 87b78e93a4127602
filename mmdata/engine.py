"""The Dask engine: every step of every stage, with its lineage, completion and funnel.

Two kinds of step:

- `map_shards(stage, shards, out)`: one task per shard. A stage object is shipped with each task
  but set up (models loaded) once per worker process, NeMo-Curator style. A shard is done when its
  `{id}_stats.json` exists in `out`: removed first when a shard is redone, written last and
  atomically, with the shard's lineage (`mmdata.lineage`: the stage's settings, digests of every
  file the task read and wrote). A re-run skips a finished shard only when its lineage still holds;
  a shard whose inputs changed is redone, one written with other settings is refused in one line
  naming the stage, the shard and the setting (`--overwrite` redoes it). An `--overwrite` leaves
  `_overwrite.json` until it completes, so an interrupted overwrite stays one. Shards that are no
  longer in the input are removed. Failures are isolated per shard, retried by Dask and reported
  with the shard and the error; the other shards still finish.
- `run_global(step, shards, out)`: map -> reduce -> write back. `step.reduce` reads every shard
  (with the cluster at hand) and writes the step's global outputs; `step.write_back` names a stage
  and the shards it writes per shard, run by `map_shards` above. `{out}/_step.json` is the one
  completion marker: `running` while the step is redone (nothing under `out` counts as finished),
  `reduced` once the global outputs are complete (a resume only finishes the write-back), `done`
  last. Its lineage covers every input of every shard.

Both write the stage's funnel (`mmdata.decisions`) from its shards' stats. `client_for` is the one
way to get or make a Dask client.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from mmdata import decisions, fsio, lineage
from mmdata.config import ConfigError, EngineConfig
from mmdata.memory import keep_freed_memory
from mmdata.models.device import pin_worker_gpu
from mmdata.tar import ShardError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
OVERWRITE = "_overwrite.json"
STEP = "_step.json"
P = TypeVar("P")


@dataclass(frozen=True)
class Shard(Generic[P]):
    """A unit of work: its id (shared by every stage's outputs for it) and what it reads, as a
    typed payload the stage defines (`store.ShardFiles` for a shard set's tar and metadata). The
    payload's str fields are the files the task reads: their digests are its lineage."""

    id: str
    input: P


class Stage:
    """Base of every shard stage. Subclasses write two methods: `setup` and `process`.

    `process(shard, out)` writes the shard's outputs (atomically, through `mmdata.fsio`) and returns
    its stats: at least `count` (records in), `successes` (records kept) and `status_dict` (status
    -> count); a stage that decides also returns `dropped` ({reason code: n}, see
    `mmdata.decisions`) and lists its reasons in order in `reasons`. Per-sample problems belong in
    the outputs as a status and error message, not in exceptions; an exception fails the whole
    shard (and is retried).
    """

    name = "stage"
    reasons: tuple[str, ...] | None = None  # a deciding stage's drop reasons, in funnel order

    def setup(self) -> None:
        """Load models and other per-process state; runs once per worker."""

    def process(self, shard: Shard, out: str) -> dict:
        raise NotImplementedError

    def settings(self) -> Any:
        """What decides this stage's outputs (recorded in every shard's lineage). Finished shards
        written under other settings are stale: a re-run refuses to mix them with new ones unless
        told to overwrite. The default is the stage's whole state; stages narrow it to leave out
        what only changes speed."""
        return self.__dict__

    def output_dirs(self, out: str) -> list[str]:
        """Folders this stage writes shard files into (temp files of a killed task are swept there)."""
        return [out]

    def cache_token(self) -> str:
        """Identifies this stage's set-up state on a worker; equal tokens share one set-up."""
        return f"{type(self).__module__}.{type(self).__qualname__}-{digest(self.__dict__)}"


def digest(state: Any) -> str:
    return lineage.fingerprint(lineage.plain(state, ""))


def kill_point(name: str) -> None:
    """Test hook: SIGKILL this process group at the named moment when MMDATA_KILL_AT says so (how
    the tests kill -9 a run between two of its steps, deterministically)."""
    if os.environ.get("MMDATA_KILL_AT") == name:
        os.killpg(os.getpgid(0), signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# worker side

_ready: dict[str, Stage] = {}
_ready_lock = threading.Lock()


class _ReportedByEngine(logging.Filter):
    """Distributed logs every failed task with its traceback; the engine reports each failed shard
    itself (one line for damaged data, which is not a bug; the traceback for anything else)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Compute Failed")


def _one_report_per_failure() -> None:
    worker_log = logging.getLogger("distributed.worker")
    if not any(isinstance(f, _ReportedByEngine) for f in worker_log.filters):
        worker_log.addFilter(_ReportedByEngine())


def _stage_on_worker(stage: Stage, token: str) -> Stage:
    with _ready_lock:
        if not _ready:  # first task in this process
            keep_freed_memory()
            _size_native_pools()
            _one_report_per_failure()
            pin_worker_gpu()  # before any stage can start CUDA in this process
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


def run_shard(stage: Stage, token: str, shard: Shard, out: str, root: str, recorded: dict) -> dict:
    """Process one shard and mark it done, with its lineage. Runs on a worker (or inline)."""
    ready = _stage_on_worker(stage, token)
    fsio.rm(stats_url(out, shard.id))  # a shard being redone is unfinished until its new stats exist
    started = time.time()
    with fsio.recording() as written:
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
        lineage={**recorded, "outputs": {lineage.normalize(u, root): d for u, d in sorted(written.items())}},
    )
    kill_point(f"{stage.name}:before-stats")
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
    _one_report_per_failure()
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


@contextmanager
def client_for(cfg: EngineConfig, client: Any = None) -> Iterator[Any]:
    """The client given, else a new one for the run (see `cluster`): the one way stages get one."""
    with nullcontext(client) if client is not None else cluster(cfg) as c:
        yield c


@dataclass
class Report:
    stage: str
    out: str
    done: dict[str, dict] = field(default_factory=dict)  # shard -> stats, this run
    skipped: list[str] = field(default_factory=list)  # finished by an earlier run, lineage unchanged
    failed: dict[str, str] = field(default_factory=dict)  # shard -> error
    redone: dict[str, str] = field(default_factory=dict)  # shard -> why its earlier output was stale
    funnel: dict = field(default_factory=dict)  # the stage's funnel over every shard (deciding stages)
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
        lines += [f"  shard {sid} redone: {why}" for sid, why in sorted(self.redone.items())[:5]]
        if len(self.redone) > 5:
            lines.append(f"  ... and {len(self.redone) - 5} more shards redone")
        lines += [f"  shard {sid} FAILED: {err}" for sid, err in sorted(self.failed.items())]
        if self.funnel and self.ok:
            lines += ["  " + line for line in decisions.funnel_lines(self.funnel)]
        return "\n".join(lines)


class StageFailed(Exception):
    def __init__(self, report: Report):
        super().__init__(report.summary())
        self.report = report


def stats_ids(out: str) -> set[str]:
    """Ids of the shards whose stats file exists under `out`."""
    fs, path = fsio.fs_path(out)
    if not fs.exists(path):
        return set()
    names = (p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    return {n[: -len("_stats.json")] for n in names if n.endswith("_stats.json")}


def finished(out: str) -> set[str]:
    """Ids of the shards finished under `out`: none while a global step is redoing it, and while
    an `--overwrite` is in progress only those it wrote already."""
    step = fsio.join(out, STEP)
    if fsio.exists(step) and fsio.read_json(step).get("state") != "done":
        return set()
    ids = stats_ids(out)
    marker = fsio.join(out, OVERWRITE)
    if ids and fsio.exists(marker):
        fp = fsio.read_json(marker).get("fingerprint")
        ids = {i for i in ids if (fsio.read_json(stats_url(out, i)).get("lineage") or {}).get("fingerprint") == fp}
    return ids


def in_progress(out: str) -> str | None:
    """What leaves `out` incomplete (an interrupted --overwrite or global step), else None."""
    if fsio.exists(fsio.join(out, OVERWRITE)):
        return "an interrupted --overwrite"
    step = fsio.join(out, STEP)
    if fsio.exists(step) and (state := fsio.read_json(step).get("state")) != "done":
        return f"an interrupted global step ({state})"
    return None


def map_shards(
    stage: Stage,
    shards: list[Shard],
    out: str,
    engine: EngineConfig | None = None,
    *,
    client: Any = None,
    overwrite: bool = False,
    root: str | None = None,
    redo: set[str] | frozenset[str] = frozenset(),
    refuse_changed_settings: bool = True,
) -> Report:
    """Apply `stage` to every shard of `shards` not finished under `out` with its lineage intact
    (`redo`: also these ids); `root` is the workdir lineage paths are relative to (default: the
    parent of `out`). Shards written under other settings are refused, or redone when
    `refuse_changed_settings` is false (a global step's write-back). Returns what happened."""
    engine = engine or EngineConfig()
    root = (root or out.rstrip("/").rsplit("/", 1)[0]).rstrip("/")
    report = Report(stage.name, out)
    t0 = time.time()
    ids = [s.id for s in shards]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{stage.name}: duplicate shard ids in input")
    settings = lineage.plain(stage.settings(), root)
    fp = lineage.fingerprint(settings)
    digests = lineage.Digests(root)
    inputs = {s.id: digests.inputs(s.input) for s in shards}
    marker = fsio.join(out, OVERWRITE)
    continuing = not overwrite and fsio.exists(marker)
    done_before = stats_ids(out)
    _remove_orphans(out, done_before - set(ids), root)
    todo, refused = [], []
    for s in shards:
        if overwrite or s.id in redo or s.id not in done_before:
            todo.append(s)
            continue
        why = lineage.changed(fsio.read_json(stats_url(out, s.id)).get("lineage"), fp, settings, inputs[s.id])
        if why is None:
            report.skipped.append(s.id)
        elif why[0] == "settings" and not continuing and refuse_changed_settings:
            refused.append((s.id, why[1]))
        else:
            todo.append(s)
            report.redone[s.id] = f"{'settings' if why[0] == 'settings' else 'inputs'} {why[1]}"
    if refused:
        sid, what = refused[0]
        more = f" (and {len(refused) - 1} more shards)" if len(refused) > 1 else ""
        raise ConfigError(f"{stage.name}: shard {sid} under {out} was written with other settings ({what}){more}; "
                          "rerun with --overwrite to redo it, or write elsewhere")
    if overwrite and todo:
        fsio.write_json(marker, {"stage": stage.name, "fingerprint": fp})
    report.skipped.sort()
    for folder in stage.output_dirs(out):
        for s in todo:
            fsio.sweep_temp(folder, s.id)
    if todo:
        recorded = {s.id: {"fingerprint": fp, "settings": settings, "inputs": inputs[s.id]} for s in todo}
        with client_for(engine, client) as c:
            _submit_all(c, stage, todo, out, root, recorded, engine, report)
    if report.ok:
        fsio.rm(marker)
        if stage.reasons is not None:
            stats = [report.done.get(i) or fsio.read_json(stats_url(out, i)) for i in ids]
            report.funnel = decisions.funnel(stage.name, stats, stage.reasons)
            fsio.write_json(fsio.join(out, decisions.FUNNEL), report.funnel)
    report.duration = time.time() - t0
    return report


def _remove_orphans(out: str, ids: set[str], root: str) -> None:
    """Finished shards whose id is no longer an input (an upstream re-run with fewer shards): the
    marker first, then every output its lineage names."""
    for sid in sorted(ids):
        url = stats_url(out, sid)
        outputs = (fsio.read_json(url).get("lineage") or {}).get("outputs") or {}
        fsio.rm(url)
        for rel in outputs:
            fsio.rm(rel if "://" in rel or rel.startswith("/") else fsio.join(root, rel))


# ---------------------------------------------------------------------------------------------
# global steps


class GlobalStep:
    """A step over every shard at once: `reduce` reads them all (on the client, with the cluster)
    and writes the step's global outputs under `out`; `write_back` gives the stage and shards that
    write each shard's result (their payloads name the global outputs, so their lineage pins them)."""

    name = "step"

    def settings(self) -> Any:
        return self.__dict__

    def reduce(self, client: Any, shards: list[Shard], out: str) -> dict:
        """Compute and write the global outputs; returns a summary kept in the marker."""
        raise NotImplementedError

    def write_back(self, shards: list[Shard], out: str) -> tuple[Stage, list[Shard]]:
        raise NotImplementedError


@dataclass
class StepReport(Report):
    step: dict = field(default_factory=dict)  # the reduce's summary


def run_global(step: GlobalStep, shards: list[Shard], out: str, engine: EngineConfig | None = None, *,
               client: Any = None, overwrite: bool = False, root: str | None = None) -> StepReport:
    """map -> reduce -> write back, with `{out}/_step.json` written last (see the module doc)."""
    engine = engine or EngineConfig()
    root = (root or out.rstrip("/").rsplit("/", 1)[0]).rstrip("/")
    t0 = time.time()
    settings = lineage.plain(step.settings(), root)
    digests = lineage.Digests(root)
    state = {"step": step.name, "fingerprint": lineage.fingerprint(settings), "settings": settings,
             "inputs": {s.id: digests.inputs(s.input) for s in shards}}
    url = fsio.join(out, STEP)
    before = fsio.read_json(url) if fsio.exists(url) else {}
    same = not overwrite and all(before.get(k) == state[k] for k in ("fingerprint", "inputs"))
    with client_for(engine, client) as c:
        if same and before.get("state") in ("reduced", "done"):
            summary = before.get("summary", {})
        else:
            fsio.write_json(url, {**state, "state": "running"})
            kill_point(f"{step.name}:reduce")
            try:
                summary = step.reduce(c, shards, out)
            except ShardsFailed as e:  # named per shard, as map_shards names its failures
                return StepReport(step.name, out, failed=e.failed, duration=time.time() - t0)
            fsio.write_json(url, {**state, "state": "reduced", "summary": summary})
        stage, targets = step.write_back(shards, out)
        # a write-back shard is redone when what it reads changed: the reduce's outputs are in its lineage
        sub = map_shards(stage, targets, out, engine, client=c, overwrite=overwrite, root=root,
                         refuse_changed_settings=False)
    report = StepReport(**{**vars(sub), "duration": time.time() - t0}, step=summary)
    if sub.ok:
        kill_point(f"{step.name}:before-done")
        fsio.write_json(url, {**state, "state": "done", "summary": summary})
    return report


def map_parts(client: Any, fn, shards: list[Shard], *args, **kwargs) -> dict[str, Any]:
    """fn(shard, *args) for every shard on the cluster, results by shard id; a failure raises
    naming the shard, the way `map_shards` names them."""
    from distributed import wait

    futures = {s.id: client.submit(fn, s, *args, pure=False, **kwargs) for s in shards}
    wait(list(futures.values()))
    out, failed = {}, {}
    for sid, fut in futures.items():
        if fut.status == "finished":
            out[sid] = fut.result()
        else:
            failed[sid] = f"{type(fut.exception()).__name__}: {fut.exception()}"
    if failed:
        sid = min(failed)
        raise ShardsFailed(failed, f"shard {sid} FAILED: {failed[sid]}" + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""))
    return out


class ShardsFailed(Exception):
    """Shards whose part of a global step failed: {id: error}."""

    def __init__(self, failed: dict[str, str], message: str):
        super().__init__(message)
        self.failed = failed


def _submit_all(client, stage: Stage, todo: list[Shard], out: str, root: str, recorded: dict, engine: EngineConfig,
                report: Report):
    from distributed import as_completed
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    token = stage.cache_token()
    futures = {
        client.submit(
            run_shard, stage, token, shard, out, root, recorded[shard.id], key=f"{stage.name}-{shard.id}-{token[-8:]}",
            retries=engine.retries, pure=False
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
                kill_point(f"{stage.name}:shard-done")
            else:
                exc = fut.exception()
                report.failed[sid] = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, ShardError):  # damaged data: one line naming the shard (and the byte offset)
                    log.error("%s: shard %s failed: %s", stage.name, sid, exc)
                else:
                    tb = "".join(traceback.format_tb(fut.traceback()))[-2000:] if fut.traceback() else ""
                    log.error("%s: shard %s failed after %d attempts: %s\n%s", stage.name, sid, engine.retries + 1, exc, tb)
            progress.advance(bar_shards)
            fut.release()
