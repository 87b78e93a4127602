"""Shared, session-wide set-up: slow things start once (per xdist worker) and are reused.

- `client`: a 2-worker Dask LocalCluster (processes), what stages run on by default.
- `s3`: a real S3 server (moto's server mode) on 127.0.0.1, with a bucket; s3fs and fsspec pick up
  its endpoint from the environment it sets.
- `http_root`: a plain HTTP server on 127.0.0.1 serving a temp folder (`.url` and `.path`).
- `demo`: a small demo corpus built once, and `demo_server` serving it.
- `mm1_tiny`, `tiny_eval`, `tiny_recaption`: the demo's models trained (and evaluated) once.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
if not SHARED.exists():  # a clone elsewhere: CI puts shared/ beside the checkout
    SHARED = Path(os.environ.get("MMDATA_SHARED", ROOT / "shared"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = SHARED / "data"
    if not path.exists():
        pytest.fail(f"real test data not found at {path} (set MMDATA_SHARED)")
    return path


@pytest.fixture(scope="session")
def client(s3):
    """Depends on `s3` so the workers inherit its endpoint and credentials (stages on workers write
    s3:// too)."""
    from mmdata.config import EngineConfig
    from mmdata.engine import cluster

    with cluster(EngineConfig(n_workers=2, threads_per_worker=1, progress=False)) as c:
        yield c


@pytest.fixture(scope="session")
def s3():
    """A moto S3 server; yields the endpoint URL. fsspec's s3 uses it through the env below."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ENDPOINT_URL_S3": endpoint,
        "FSSPEC_S3_ENDPOINT_URL": endpoint,
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("mmdata-test")
    yield endpoint
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@dataclass
class HttpRoot:
    path: Path
    url: str


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output readable
        pass


@pytest.fixture(scope="session")
def http_root(tmp_path_factory) -> HttpRoot:
    root = tmp_path_factory.mktemp("www")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield HttpRoot(root, f"http://127.0.0.1:{server.server_port}")
    server.shutdown()


DEMO_PAIRS, DEMO_DOCS = 400, 40  # small enough to build in seconds, large enough for precision/recall
# The training shards' corpus: the same documents (seed 0, DEMO_DOCS) and more pairs, 888 captions after
# filter, dedup and clipscore: from the ~280 of DEMO_PAIRS the tiny MM1 learns colours but not the shape words
# (docs/trainer.md, "What the tiny model learns").
TRAIN_PAIRS = 1600


@contextmanager
def one_thread():
    """Torch on one thread while a tiny model trains: the two test processes share the two cores, and
    tiny matrices gain nothing from a second thread that the other process needs."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def shared_once(tmp_path_factory, name: str, make) -> Path:
    """A folder built once per test session and shared by the xdist workers (deterministic
    builds only): the first worker builds it under a file lock, the others reuse it."""
    return built_once(shared_base(tmp_path_factory), name, make)


def shared_base(tmp_path_factory) -> Path:
    """The session's temp folder every xdist worker sees (theirs are its subfolders)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(base: Path, name: str, make) -> Path:
    """`base/name`, made by `make(folder)` under `base/name.lock` unless `base/name.done` says it is there."""
    from filelock import FileLock

    folder, done = base / name, base / f"{name}.done"
    with FileLock(str(base / f"{name}.lock")):
        if not done.exists():
            make(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> Path:
    """A small demo corpus (pairs/, docs/, truth files, manifest.json), seed 0."""
    from mmdata.demo.corpus import build

    return shared_once(tmp_path_factory, "demo-corpus", lambda p: build(p, n_pairs=DEMO_PAIRS, n_docs=DEMO_DOCS, seed=0))


@pytest.fixture(scope="session")
def demo_server(demo_corpus):
    """The demo web server over `demo_corpus`, in its own process (`.url`, `.port`, `.stats()`)."""
    from mmdata.demo.server import DemoServer

    with DemoServer(demo_corpus) as server:
        yield server


@pytest.fixture(scope="session")
def downloaded(tmp_path_factory, demo_corpus, demo_server, client):
    """`demo_corpus` pairs downloaded once (through `mmdata.stages.download.run`) from `demo_server`.

    Returns the Pipeline; its `download.output` holds the shard set. Shared by every test (and
    xdist worker): read it, and write your own stage under your own workdir, e.g.
    `Pipeline(workdir=tmp_path, download=downloaded.download, <stage>=...)`.
    """
    from mmdata.config import Pipeline
    from mmdata.stages import download

    def make(folder: Path) -> None:
        download.run(recipe(folder), client=client)

    def recipe(folder: Path) -> Pipeline:
        return Pipeline(workdir=str(folder), engine={"progress": False}, download={
            "input": str(demo_corpus / "pairs" / "urls.parquet"), "samples_per_shard": 100,
            "output": str(folder / "download"),
            "fetch": {"connect_to": {"*.demo.mmdata.test": f"127.0.0.1:{demo_server.port}"}, "allow": ["127.0.0.1"],
                      "max_bytes": 8 * 2**20},
        })

    return recipe(shared_once(tmp_path_factory, "downloaded", make))


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory, client) -> Path:
    """Training shards made by the real stages, as `make demo` makes them, from a demo corpus of TRAIN_PAIRS
    pairs (its documents are `demo_corpus`'s): download from its own demo web server, filter, dedup,
    interleaved and text over the demo WARC, clipscore (a tiny CLIP trained on the corpus,
    pipelines/demo.yaml's settings), then `shards`. Returns the folder holding captions/, interleaved/ and text/ (each
    with manifest.json), as the mixture YAMLs expect."""
    from mmdata.config import Pipeline
    from mmdata.demo.corpus import build
    from mmdata.demo.server import DemoServer
    from mmdata.demo.tiny_clip import TinyClipConfig, ensure_tiny_clip
    from mmdata.stages import clipscore, dedup, download, filter, interleaved, text, training_shards

    def make(folder: Path) -> None:
        corpus = folder / "corpus"
        build(corpus, n_pairs=TRAIN_PAIRS, n_docs=DEMO_DOCS, seed=0)
        warc = str(corpus / "docs" / "pages.warc.gz")
        ensure_tiny_clip(corpus, folder / "clip", TinyClipConfig())
        with DemoServer(corpus) as server:
            fetch = {"connect_to": {"*.demo.mmdata.test": f"127.0.0.1:{server.port}"}, "allow": ["127.0.0.1"]}
            pipe = Pipeline(workdir=str(folder), engine={"progress": False},
                            download={"input": str(corpus / "pairs" / "urls.parquet"), "samples_per_shard": 400,
                                      "output": str(folder / "download"), "fetch": {**fetch, "max_bytes": 8 * 2**20}},
                            filter={"input": str(folder / "download")}, dedup={},
                            clipscore={"model": str(folder / "clip"), "batch_size": 64, "top_fraction": 0.8,
                                       "pool_after": ["filter", "dedup"], "documents": {"threshold": None}},
                            interleaved={"input": warc, "fetch": fetch}, text={"input": warc},
                            shards={"shard_samples": 256})
            for stage in (download, filter, dedup, interleaved, text, clipscore, training_shards):  # the demo's order
                report = stage.run(pipe, client=client)
                assert report.ok, report.summary()

    return shared_once(tmp_path_factory, "demo-shards", make) / "shards"


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory, demo_corpus) -> Path:
    """A tiny CLIP trained once per session on `demo_corpus` through the function `mmdata demo` calls, with
    fewer steps than the demo's (60: the pairs' AUC still holds)."""
    from mmdata.demo.tiny_clip import TinyClipConfig, ensure_tiny_clip

    def make(folder: Path) -> None:
        with one_thread():
            ensure_tiny_clip(demo_corpus, folder, TinyClipConfig(steps=60))

    return shared_once(tmp_path_factory, "tiny-clip", make)


@pytest.fixture(scope="session")
def demo_clip(demo_shards) -> Path:
    """The tiny CLIP `demo_shards` was scored with: `make demo`'s (300 steps on its corpus)."""
    return Path(demo_shards).parent / "clip"


@pytest.fixture(scope="session")
def mm1_tokenizer(tmp_path_factory, demo_shards) -> str:
    """The tiny MM1's BPE (pipelines/mm1-tiny.yaml `decoder.train_tokenizer`) trained once on `demo_shards`'
    mixture through the trainer's own `tokenizer_for`: runs whose losses are compared share it."""
    from mmdata.mm1 import dist, tiny, train

    def make(folder: Path) -> None:
        recipe = tiny.recipe(demo_shards, folder, ["train.progress=false"])
        train.tokenizer_for(recipe, train.mixture_of(recipe), dist.Dist(), echo=lambda *_: None)

    return str(shared_once(tmp_path_factory, "mm1-tokenizer", make) / "tokenizer")


def build_tower(folder: Path) -> None:
    """pipelines/mm1-tiny.yaml's `encoder.pretrain` into `folder`, on one thread as the recipe trains it."""
    from mmdata.demo import tiny_vision as tv
    from mmdata.mm1 import tiny
    from mmdata.mm1.train import load_recipe

    with one_thread():
        tv.train(folder, load_recipe(tiny.RECIPE).model.encoder.pretrain, echo=print)


@pytest.fixture(scope="session")
def tiny_vision(tmp_path_factory) -> str:
    """The tiny MM1's pretrained image encoder (pipelines/mm1-tiny.yaml `encoder.pretrain`, through
    `mmdata.demo.tiny_vision`), built once per session; pass `model.encoder.model=<it>` to tiny recipes."""
    return str(shared_once(tmp_path_factory, "tiny-vision", build_tower))


@pytest.fixture(scope="session", autouse=True)
def _tower_first(request, tmp_path_factory):
    """The pretrained tower is the longest single set-up (2-4 CPU minutes, one thread) and three model
    fixtures wait on it: when this session runs a test that needs it, its build starts at once, in a
    process of its own beside the test workers (under the same lock `tiny_vision` takes: whoever comes
    first builds it, the other waits for it)."""
    import subprocess
    import sys

    if os.environ.get("PYTEST_XDIST_WORKER", "gw0") != "gw0" or not any(
            "tiny_vision" in getattr(item, "fixturenames", ()) for item in request.session.items):
        yield
        return
    base = shared_base(tmp_path_factory)
    code = (f"import sys; from pathlib import Path; sys.path.insert(0, {str(Path(__file__).parent)!r}); import conftest; "
            f"conftest.built_once(Path({str(base)!r}), 'tiny-vision', conftest.build_tower)")
    with open(base / "tiny-vision.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT)
    yield
    proc.kill()  # finished long ago in a full run; a run cut short leaves no orphan (and no .done)
    proc.wait()


MM1_TINY_STEPS = 900
# the tiny MM1's decoder built from its config (random init) instead of the pretrained tiny LM
# (`decoder.pretrain`, 2-3 CPU minutes): what the mechanics tests and the captioning fixture train;
# tests/test_tiny_lm.py builds the LM itself
def _random_lm() -> list[str]:
    from mmdata.mm1 import tiny
    from mmdata.mm1.train import load_recipe

    shape = load_recipe(tiny.RECIPE).model.decoder.pretrain.config  # the LM's own config, never a copy of it
    return ["model.decoder.model=null", "model.decoder.pretrain=null", f"model.decoder.config={json.dumps(shape)}"]


RANDOM_LM = _random_lm()


@pytest.fixture(scope="session")
def mm1_tiny(tmp_path_factory, demo_shards, tiny_vision):
    """The tiny MM1 (pipelines/mm1-tiny.yaml) trained once per session on `demo_shards` through
    `mmdata.mm1.train.run`, on their captions only, so it learns to caption in a few hundred CPU steps. The
    pretrained encoder is frozen: tuned on a thousand AltTexts it loses the shapes it tells apart.
    Returns the run's Result (`.model` loads with `MM1.from_pretrained`, `.log` is log.jsonl)."""
    from mmdata.mm1 import tiny, train

    overrides = [f"train.steps={MM1_TINY_STEPS}", f"train.checkpoint_every={MM1_TINY_STEPS}", "train.progress=false",
                 "data.seq_len=128", "data.num_workers=1", "train.threads=1", f"model.encoder.model={tiny_vision}", "model.encoder.freeze=true",
                 # with the tower frozen the connector is the only vision part that learns, and captions alone do not
                 # collapse it (what lowered the recipe's rate, docs/eval.md reading 6): shape 36% at 0.005, 28% at 0.0005
                 "optim.connector_lr=0.005", *RANDOM_LM]
    mix = ["global_batch=16", "sources.captions.weight=100", "sources.interleaved.weight=0", "sources.text.weight=0"]
    result = {}

    def make(folder: Path) -> None:
        result["run"] = train.run(tiny.recipe(demo_shards, folder, overrides, mix), echo=lambda *_: None)

    folder = shared_once(tmp_path_factory, "mm1-tiny", make)
    return result.get("run") or train.Result(str(folder), str(folder / "log.jsonl"), None, str(folder / "model"),
                                             MM1_TINY_STEPS, None)


@dataclass
class TinyEval:
    work: Path  # a workdir holding eval/results.jsonl
    results: Path
    said: list[str]  # what the evaluation printed


@pytest.fixture(scope="session")
def tiny_eval(tmp_path_factory, mm1_tiny, demo_corpus) -> TinyEval:
    """What `make demo` runs after training (`mmdata.demo.run.evaluate_tiny`: pipelines/eval-demo.yaml,
    DEMO_EVAL_ITEMS items per task and shot count) on `mm1_tiny`, once per session."""
    from mmdata.demo import run as demo_run

    def make(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        old = os.environ.get("MMDATA_DEMO_CORPUS")
        os.environ["MMDATA_DEMO_CORPUS"] = str(demo_corpus)  # the held-out tasks eval-demo.yaml reads
        try:
            said = []
            got = demo_run.evaluate_tiny(ROOT / "pipelines" / "eval-demo.yaml", mm1_tiny.model, str(folder),
                                         echo=said.append)
            assert got == str(folder / "eval" / "results.jsonl")
            (folder / "said.txt").write_text("\n".join(said))
        finally:
            os.environ.pop("MMDATA_DEMO_CORPUS") if old is None else os.environ.__setitem__("MMDATA_DEMO_CORPUS", old)

    folder = shared_once(tmp_path_factory, "tiny-eval", make)
    return TinyEval(folder, folder / "eval" / "results.jsonl", (folder / "said.txt").read_text().splitlines())


@dataclass
class TinyRecaption:
    clip: Path
    captioner: Path
    fuser: Path


@pytest.fixture(scope="session")
def tiny_recaption(tmp_path_factory, demo_corpus, tiny_vision, tiny_clip) -> TinyRecaption:
    """The tiny LLaVA captioner (from the `tiny_vision` tower, as `make demo` builds it) and the tiny fusion
    LM trained once per session on `demo_corpus` through the functions `mmdata demo` calls (fewer steps
    than the demo's), and `tiny_clip` to score their captions."""
    from mmdata.demo.tiny_recaption import TinyRecaptionConfig, ensure_tiny_recaption

    def make(folder: Path) -> None:
        with one_thread():
            ensure_tiny_recaption(demo_corpus, folder / "captioner", folder / "fuser",
                                  TinyRecaptionConfig(captioner_steps=300, fuser_steps=60, rendered=600, vision=tiny_vision),
                                  echo=print)

    root = shared_once(tmp_path_factory, "tiny-recaption", make)
    return TinyRecaption(tiny_clip, root / "captioner", root / "fuser")
