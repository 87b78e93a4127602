"""The MM1 trainer end to end on the demo's training shards (the session's `demo_shards`), through
`mmdata.mm1.train.run`, `python -m mmdata train` and `torchrun`: it learns to caption, a SIGKILL
resumes exactly, 2-process DDP and FSDP match 1 process, the GPU benchmark's code runs on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import RANDOM_LM

from mmdata.mm1 import MM1, tiny, train
from mmdata.mm1.metrics import read_log
from mmdata.mm1.probe import caption_probe

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
QUIET = ["train.progress=false", "train.threads=1", "data.num_workers=1"]
SMALL = [*QUIET, "data.seq_len=128"]
SMALL_MIX = ["global_batch=8"]
# the mechanics tests (resume, S3, distributed) need no pretrained tower: a random one of its shape, so they run
# while the session's tower is still being pretrained
RANDOM_TOWER = ["model.encoder.model=null", "model.encoder.pretrain=null",
                ("model.encoder.config={model_type: clip_vision_model, image_size: 64, patch_size: 8, hidden_size: 64, "
                "intermediate_size: 256, num_hidden_layers: 2, num_attention_heads: 2}")]
# the session's demo shards, tower and tiny MM1 are made by the first test that needs them (conftest.py)
pytestmark = pytest.mark.timeout(1800)


def write_recipe(path: Path, recipe) -> Path:
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True), sort_keys=False))
    return path


def losses(log: str) -> list[tuple[int, float, int, int]]:
    return [(r["step"], r["loss"], r["epoch"], r["batch"]) for r in read_log(log)]


# -- resume


def test_sigkill_resume_continues_exactly_and_refuses_other_settings(demo_shards, mm1_tokenizer, tmp_path):
    over = [*SMALL, "train.steps=8", "train.checkpoint_every=2", "train.keep=2", "model.decoder.train_tokenizer=null",
            f"model.decoder.tokenizer={mm1_tokenizer}", *RANDOM_TOWER, *RANDOM_LM]  # one tokenizer for every run compared here
    ref = train.run(tiny.recipe(demo_shards, tmp_path / "ref", over, SMALL_MIX), echo=lambda *_: None)

    cfg = write_recipe(tmp_path / "run.yaml", tiny.recipe(demo_shards, tmp_path / "run", over, SMALL_MIX))
    cmd = [sys.executable, "-m", "mmdata", "train", "--config", str(cfg)]
    log = tmp_path / "run" / "log.jsonl"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while not (log.exists() and any(json.loads(x)["step"] >= 3 for x in log.read_text().splitlines() if x)):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "the run never reached step 3"
            time.sleep(0.02)
        assert proc.poll() is None  # killed mid-run
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    done = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if (p / "done.json").exists())
    assert done and done[-1] >= "step-00000002" and "step-00000008" not in done

    again = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed" in again.stdout
    got, want = losses(str(log)), losses(ref.log)
    assert [s for s, *_ in got] == list(range(1, 9))  # each step once: the killed run's extra records trimmed
    assert [(e, b) for _, _, e, b in got] == [(e, b) for _, _, e, b in want]  # the same batches
    for (s, a, *_), (_, b, *_) in zip(got, want):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-7), f"step {s}"
    # the final weights too
    a = MM1.from_pretrained(str(tmp_path / "run" / "model"))
    b = MM1.from_pretrained(ref.model)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=name)
    # keep: 2 -> only the newest two complete checkpoints remain
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-00000006", "step-00000008"]

    # the finished run refuses other settings in one line, naming them; a pace knob may change
    changed = subprocess.run([*cmd, "--set", "optim.lr=0.01", "--set", "data.num_workers=2"], cwd=ROOT, env=ENV,
                             capture_output=True, text=True, timeout=300, check=False)
    assert changed.returncode == 2
    line = changed.stderr.strip()
    assert line.startswith("error: ") and "optim.lr: 0.002 -> 0.01" in line and "\n" not in line, line
    assert "num_workers" not in line


def test_a_run_on_s3_checkpoints_resumes_and_exports(demo_shards, mm1_tokenizer, s3):
    import fsspec

    over = [*SMALL, "train.steps=2", "train.checkpoint_every=1", "train.keep=1", "model.decoder.train_tokenizer=null",
            f"model.decoder.tokenizer={mm1_tokenizer}", *RANDOM_TOWER, *RANDOM_LM]
    recipe = tiny.recipe(demo_shards, "s3://mmdata-test/mm1-run", over, SMALL_MIX)
    first = train.run(recipe, echo=lambda *_: None)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    assert fs.exists("mmdata-test/mm1-run/checkpoints/step-00000002/done.json")
    assert not fs.exists("mmdata-test/mm1-run/checkpoints/step-00000001")  # keep: 1
    assert {p.rsplit("/", 1)[-1] for p in fs.ls("mmdata-test/mm1-run/checkpoints/step-00000002")} == {
        "done.json", "model.pt", "optim.pt", "rng-00000.pt", "sampler-00000.json", "train.json"}
    said = []
    again = train.run(recipe, echo=said.append)  # finished: resumes at its last step, nothing repeated
    assert any(line.startswith("resumed s3://mmdata-test/mm1-run at step 2") for line in said)
    assert [r["step"] for r in read_log(again.log)] == [1, 2] and again.loss is None
    model = MM1.from_pretrained(first.model)  # the export, read back from S3
    assert len(model.generate([["one red circle"]], max_new_tokens=3)) == 1


def test_a_pretrained_encoder_is_reused_only_with_its_own_recipe(demo_shards, mm1_tokenizer, tmp_path):
    """`encoder.pretrain` builds the folder once; a changed recipe in YAML builds it again, never reuses it."""
    from mmdata.demo import tiny_vision as tv

    folder = tmp_path / "tower"
    base = [*SMALL, "train.steps=1", "model.decoder.train_tokenizer=null", f"model.decoder.tokenizer={mm1_tokenizer}",
            f"model.encoder.model={folder}", "model.encoder.pretrain.images=64", *RANDOM_LM]

    def run(name: str, steps: int) -> list[str]:
        said = []
        over = [*base, f"model.encoder.pretrain.steps={steps}"]
        train.run(tiny.recipe(demo_shards, tmp_path / name, over, SMALL_MIX), echo=said.append)
        return said

    run("a", 2)
    assert tv.built_with(folder)["steps"] == 2
    weights = (folder / "model.safetensors").stat().st_mtime_ns
    said = run("b", 2)  # the same recipe: reused as it is
    assert not any("building again" in line for line in said)
    assert (folder / "model.safetensors").stat().st_mtime_ns == weights
    said = run("c", 3)  # the YAML changed: built again, and said so
    assert any(line.startswith(f"encoder.model {folder}: built with another recipe") for line in said), said
    assert tv.built_with(folder)["steps"] == 3


# -- distributed


@pytest.fixture(scope="module")
def one_process(demo_shards, mm1_tokenizer, tmp_path_factory):
    """3 steps of 1 process reading both data ranks of a 2-rank stream (the doubled batch)."""
    over = [*SMALL, "train.steps=3", "data.data_ranks=2", "model.decoder.train_tokenizer=null",
            f"model.decoder.tokenizer={mm1_tokenizer}", *RANDOM_TOWER, *RANDOM_LM]
    out = tmp_path_factory.mktemp("one")
    return over, train.run(tiny.recipe(demo_shards, out / "run", over, SMALL_MIX), echo=lambda *_: None)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_process_with_the_doubled_batch(strategy, one_process, demo_shards, tmp_path):
    over, one = one_process
    cfg = write_recipe(tmp_path / "r.yaml",
                       tiny.recipe(demo_shards, tmp_path / "run", [*over, f"train.strategy={strategy}"], SMALL_MIX))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "mmdata", "train", "-c", str(cfg)]
    res = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=400, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"2 process(es) x 1 data rank(s), cpu, fp32, strategy {strategy}" in res.stdout
    got, want = losses(str(tmp_path / "run" / "log.jsonl")), losses(one.log)
    assert [s for s, *_ in got] == [1, 2, 3]
    for (s, a, *_), (_, b, *_) in zip(got, want):
        assert a == pytest.approx(b, rel=2e-5), f"step {s}: {a} vs {b}"
    # one sampler state per data rank, written by the rank that read it
    ck = tmp_path / "run" / "checkpoints" / "step-00000003"
    assert sorted(p.name for p in ck.glob("sampler-*.json")) == ["sampler-00000.json", "sampler-00001.json"]
    # and the weights they end with
    a = MM1.from_pretrained(str(tmp_path / "run" / "model"))
    b = MM1.from_pretrained(one.model)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=1e-3, atol=1e-5, msg=name)


def test_the_gpu_benchmark_path_runs_on_cpu_at_toy_size(tmp_path):
    """benchmarks/bench_train.py's GPU configuration (C-Abstractor to 144 tokens, packed sequences of
    several images, bf16 autocast, MFU) through the same functions, at toy width on CPU."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_train", ROOT / "benchmarks" / "bench_train.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    shards = bench.build_shards(tmp_path / "shards", n_pairs=40, n_docs=12, n_text=12)
    encoder = {**bench.VIT_L_336, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
               "num_attention_heads": 2, "image_size": 56}
    decoder = {**bench.LLAMA_1B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
               "num_attention_heads": 4, "num_key_value_heads": 2}
    recipe = bench.gpu_recipe(shards, tmp_path / "run", steps=2, encoder=encoder, decoder=decoder, image_size=56,
                              seq_len=640, global_batch=6, micro_batch=2, device="cpu", compile=False, vocab=400,
                              num_workers=1, peak_tflops=1.0, connector_hidden=32)
    assert recipe.train.precision == "bf16" and recipe.model.connector.tokens == 144
    res = train.run(recipe.model_copy(update={"train": recipe.train.model_copy(update={"threads": 1})}),
                    echo=lambda *_: None)
    log = read_log(res.log)
    assert len(log) == 2 and all(r["images"] > 0 and 0 < r["mfu"] < 1 for r in log)
    assert max(r["images"] / r["sequences"] for r in log) > 1  # several images share a packed sequence
    s = bench.summarise(res.log, skip=0)
    assert s["tokens_per_s"] > 0 and 0 <= s["data_share"] <= 1


# -- learning (last in the file: the mechanics above run while the session pretrains the tower these need)


def test_tiny_mm1_learns_to_caption_held_out_demo_images(mm1_tiny):
    log = read_log(mm1_tiny.log)
    assert [r["step"] for r in log] == list(range(1, len(log) + 1)) and len(log) >= 200
    first = sum(r["loss"] for r in log[:10]) / 10
    last = sum(r["loss"] for r in log[-10:]) / 10
    assert last < 0.5 * first, (first, last)
    assert all(0 <= r["data_share"] <= 1 and r["tokens_per_s"] > 0 and r["images"] > 0 for r in log)
    assert log[0]["lr"]["decoder"] < log[30]["lr"]["decoder"]  # warm-up, then cosine decay
    optim = json.loads((Path(mm1_tiny.out) / "recipe.json").read_text())["recipe"]["optim"]  # what the run was given
    peak = {part: max(r["lr"][part] for r in log) for part in ("decoder", "connector")}
    assert peak["decoder"] == pytest.approx(optim["lr"], rel=0.01)
    assert peak["connector"] == pytest.approx(optim["connector_lr"], rel=0.01) != peak["decoder"]  # its own rate
    for part, top in peak.items():  # each decays to 10% of its own peak
        assert log[-1]["lr"][part] == pytest.approx(0.1 * top, rel=0.05), part

    model = MM1.from_pretrained(mm1_tiny.model)
    probe = caption_probe(model, n=96, seed=1)
    print(probe.line(), probe.examples)
    # chance is 1/8 for each (P(>= 48 of 96) < 1e-18, P(>= 27 of 96) < 3e-5): the model sees what it
    # describes. Shapes are harder than colours for the tiny pretrained ViT (docs/trainer.md, "What the
    # tiny model learns"), so their bar is lower.
    assert probe.colour >= 0.5 and probe.background >= 0.5, probe.line()
    assert probe.shape >= 0.28, probe.line()


def test_the_evaluation_scores_what_the_trainer_trained(mm1_tiny):
    """`mmdata.eval`'s wrapper over the exported model: a continuation's log-probability is exactly
    minus the trainer's loss on the same tokens, and its captions are the model's own."""
    from mmdata.eval.models import MM1Model
    from mmdata.mm1.pack import IGNORE
    from mmdata.mm1.probe import images

    ev = MM1Model.load(mm1_tiny.model)
    model = ev.model
    (_, img), (_, other) = images(2, seed=7)
    said = ev.generate([[img], [other]], max_new_tokens=12)
    assert said == model.generate([[img], [other]], max_new_tokens=12) and all(said)
    text = "one red circle on a plain blue background"
    score = ev.score([[img]], [text])[0]

    enc = model.codec.encode([0, text], eos=False)  # how training encodes a pair: BOS, image run, caption
    ids = torch.tensor([enc.ids])
    tgt = torch.tensor([[enc.ids[i + 1] if enc.supervised[i + 1] else IGNORE for i in range(len(enc.ids) - 1)]
                        + [IGNORE]])
    with torch.no_grad():
        out = model(ids, torch.arange(ids.shape[1]).unsqueeze(0), tgt, model.prepare_image(img).unsqueeze(0))
    assert int(out["targets"]) == len(model.codec.text(text)) > 0
    assert score == pytest.approx(-float(out["loss_sum"]), rel=1e-4)


def test_a_prompt_image_is_prepared_as_the_trainer_prepares_its_file(mm1_tiny):
    """The evaluation hands the model decoded (PIL) images: each must become the tensor the training
    decoder makes of its file's bytes, EXIF orientation and alpha included."""
    import io

    import numpy as np
    from PIL import Image

    from mmdata.eval.models import MM1Model

    model = MM1Model.load(mm1_tiny.model).model
    rng = np.random.default_rng(3)
    rgba = Image.fromarray(rng.integers(0, 256, (30, 50, 4), dtype=np.uint8), "RGBA")
    png = io.BytesIO()
    rgba.save(png, format="PNG")
    turned = Image.fromarray(np.stack([*np.meshgrid(np.arange(50) * 5, np.arange(30) * 8), np.full((30, 50), 90)], -1).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to view
    jpeg = io.BytesIO()
    turned.save(jpeg, format="JPEG", quality=95, exif=exif)
    for data in (png.getvalue(), jpeg.getvalue()):
        want = model.prepare_image(data)
        assert torch.equal(model.prepare_image(Image.open(io.BytesIO(data))), want)
    seen = model.prepare_image(jpeg.getvalue()).float()  # the turn shows: near the turned picture, far from the stored one
    near = (model.prepare_image(turned.transpose(Image.Transpose.ROTATE_270)).float() - seen).abs().mean()
    assert near < (model.prepare_image(turned).float() - seen).abs().mean() / 3
