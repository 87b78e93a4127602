"""The mixture sampler through its public entry points: YAML mixtures, `loader`, `MixDataset`,
`Plan`, and `python -m mmdata mix-stats`, over real shards (local, moto S3, HTTP)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from mmdata import config as cfgmod
from mmdata import manifest as mf
from mmdata.cli import app
from mmdata.config import ConfigError, Mixture
from mmdata.mix import MixDataset, MixError, MixExhausted, Plan, loader
from mmdata.samples import ShardWriter

ROOT = Path(__file__).resolve().parent.parent
N_PAIRS, N_DOCS, N_TEXT = 300, 200, 120
BAD_PAIR = 7  # its jpg member is not an image


def jpg(i: int, w: int = 12, h: int = 9) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (i % 256, (7 * i) % 256, 90)).save(buf, "JPEG")
    return buf.getvalue()


def build(root: Path) -> dict:
    """Three sources of different sizes and shard sizes (pairs 6 x 50, docs 64/shard, text 3 x 40)."""
    with ShardWriter(f"{root}/pairs", max_samples=50) as w:
        for i in range(N_PAIRS):
            key = f"{i // 50:05d}{i % 50:04d}"
            rec = {"key": key, "kind": "pair", "schema_version": 1, "url": f"http://x/{i}.jpg",
                   "caption": f"alt {i}", "status": "success"}
            if i % 2 == 0:
                rec["synthetic_caption"] = f"syn {i}"
            w.write({"__key__": key, "jpg": b"not a jpeg" if i == BAD_PAIR else jpg(i), "txt": f"alt {i}", "json": rec})
    with ShardWriter(f"{root}/docs", max_samples=64) as w:
        for i in range(N_DOCS):
            key = f"{i // 64:05d}{i % 64:04d}"
            slots = [{"type": "text", "text": f"doc {i} intro"}, {"type": "image", "index": 0, "url": "u0"},
                     {"type": "text", "text": f"doc {i} body"}, {"type": "image", "index": 1, "url": "u1"}]
            w.write({"__key__": key, "0.jpg": jpg(i, 20, 10), "1.jpg": jpg(i + 1, 10, 30),
                     "json": {"key": key, "kind": "interleaved", "schema_version": 1, "url": f"http://d/{i}", "slots": slots}})
    with ShardWriter(f"{root}/text", max_samples=40, members=True) as w:
        for i in range(N_TEXT):
            key = f"{i // 40:05d}{i % 40:04d}"
            t = f"text document {i}. " * (1 + i % 5)
            w.write({"__key__": key, "txt": t,
                     "json": {"key": key, "kind": "text", "schema_version": 1, "url": f"http://t/{i}", "n_chars": len(t)}})
    # the `shards` stage's manifest (with member indexes), beside the text shards only: counts come from it
    mf.write(f"{root}/text", mf.build("text", [{"name": Path(i.url).name, "count": i.count, "bytes": i.bytes,
                                                "sha256": i.sha256, "members": Path(i.members).name,
                                                "members_sha256": i.members_sha256} for i in w.shards]))
    return {"pairs": f"{root}/pairs/{{00000..00005}}.tar", "docs": f"{root}/docs/*.tar",
            "text": f"{root}/text/manifest.json"}


def mixture(patterns: dict, **over) -> Mixture:
    data = {"name": "t", "seed": 3, "global_batch": 16, "lanes": 4, "total": 100,
            "sources": {"captions": {"shards": patterns["pairs"], "weight": 45, "synthetic_share": 0.5},
                        "interleaved": {"shards": patterns["docs"], "weight": 45},
                        "text": {"shards": patterns["text"], "weight": 10}},
            "decode": {"image_size": 16}}
    for k, v in over.items():
        node, *path = k.split(".")
        target = data
        for part in [node, *path][:-1]:
            target = target[part]
        target[[node, *path][-1]] = v
    return Mixture.model_validate(data)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("mix")
    return root, build(root)


def keys_of(batch: dict) -> list[str]:
    return [f"{s}/{k}" for s, k in zip(batch["sources"], batch["keys"])]


def read(mix: Mixture, *, rank=0, world=1, workers=0, n=None, decode=False, state=None) -> list[dict]:
    ld = loader(mix, rank=rank, world_size=world, num_workers=workers, decode=decode)
    if state:
        ld.load_state_dict(state)
    out = []
    for batch in ld:
        out.append(batch)
        if n is not None and len(out) >= n:
            break
    return out


# ---------------------------------------------------------------------------------------------
# config


def test_yaml_validation_errors_are_clear(tmp_path):
    base = {"sources": {"a": {"shards": "x/*.tar", "weight": 45}, "b": {"shards": "y/*.tar", "weight": 45}}}
    cases = [
        ({"total": 100}, "weights sum to 90, but total is 100"),
        ({"sources": {"a": {"shards": "x", "weight": -1}}}, "sources.a.weight"),
        ({"sources": {"a": {"shards": "x", "weight": 0}}}, "every weight is 0"),
        ({"sources": {"a": {"shards": "x", "weigth": 1}}}, "sources.a.weigth: unknown key"),
        ({"sources": {}}, "sources"),
        ({"guarantee": "roughly"}, "guarantee"),
    ]
    for over, message in cases:
        path = tmp_path / "m.yaml"
        path.write_text(yaml.safe_dump({**base, **over}))
        with pytest.raises(ConfigError) as e:
            cfgmod.load(path, Mixture)
        assert message in str(e.value), (over, str(e.value))


def test_presets():
    mm1 = cfgmod.load(ROOT / "pipelines/mixtures/mm1.yaml", Mixture)
    mm15 = cfgmod.load(ROOT / "pipelines/mixtures/mm1.5.yaml", Mixture)
    assert {k: s.weight for k, s in mm1.sources.items()} == {"captions": 45, "interleaved": 45, "text": 10}
    assert {k: s.weight for k, s in mm15.sources.items()} == {"captions": 50, "interleaved": 10, "text": 40}
    assert mm1.sources["captions"].synthetic_share == pytest.approx(0.07)
    assert mm1.guarantee == "exact" and mm1.exhaustion == "cycle" and mm1.unit == "samples"


# ---------------------------------------------------------------------------------------------
# the plan


def test_plan_exact_every_batch_and_long_run():
    weights, batch = [45, 45 * 0.93, 10, 3], 48  # awkward ratios on purpose
    plan = Plan(weights, batch, world_size=4, seed=1)
    p = np.array(weights) / sum(weights)
    total = np.zeros(4, dtype=int)
    for b in range(1000):
        c = plan.counts(0, b)
        assert c.sum() == batch
        assert (c >= np.floor(p * batch)).all() and (c <= np.ceil(p * batch)).all()
        per_rank = plan.rank_counts(0, b)
        assert (per_rank.sum(axis=0) == batch // 4).all() and (per_rank.sum(axis=1) == c).all()
        assert (per_rank.max(axis=1) - per_rank.min(axis=1) <= 1).all()
        total += c
        assert (np.abs(total - p * batch * (b + 1)) < 1).all()  # the rotation keeps the long run exact


def test_plan_expected_mode_draws_independently():
    plan = Plan([45, 45, 10], 64, world_size=1, seed=2, guarantee="expected")
    counts = np.array([plan.counts(0, b) for b in range(2000)])
    assert len({tuple(c) for c in counts}) > 100  # batches really vary
    assert np.allclose(counts.sum(0) / counts.sum(), [0.45, 0.45, 0.10], atol=0.01)
    assert (plan.counts(0, 5) == counts[5]).all() and (plan.counts(1, 5) != counts[5]).any()


def test_plan_refuses_batch_not_divisible_by_ranks():
    with pytest.raises(MixError, match="not divisible by world_size"):
        Plan([1, 1], 10, world_size=4)


# ---------------------------------------------------------------------------------------------
# the stream


def test_exact_counts_disjoint_and_worker_independent(data):
    """2 ranks x 1, 2 and 4 workers over a whole epoch (exhaustion: stop)."""
    _, pat = data
    mix = mixture(pat, exhaustion="stop")
    p = np.array([0.45, 0.45, 0.10])
    streams = {}
    for workers in (1, 2, 4):
        ranks = [read(mix, rank=r, world=2, workers=workers) for r in range(2)]
        assert len(ranks[0]) == len(ranks[1]) > 10  # both ranks stop at the same batch: no DDP hang
        seen: list[str] = []
        for b, (x, y) in enumerate(zip(*ranks)):
            assert x["batch"] == y["batch"] == b and len(x["keys"]) == len(y["keys"]) == 8
            c = Counter(x["sources"]) + Counter(y["sources"])
            counts = np.array([c["captions"], c["interleaved"], c["text"]])
            assert (counts >= np.floor(p * 16)).all() and (counts <= np.ceil(p * 16)).all(), counts
            seen += keys_of(x) + keys_of(y)
        assert len(seen) == len(set(seen)), "a sample was read twice within the epoch"
        streams[workers] = [keys_of(b) for r in ranks for b in r]
    assert streams[1] == streams[2] == streams[4]


def test_stop_error_cycle_policies(data):
    _, pat = data
    stopped = read(mixture(pat, exhaustion="stop"))
    docs = sum(Counter(b["sources"])["interleaved"] for b in stopped)
    # interleaved (200 samples at 45%) runs out first; the epoch ends when one of its 4 lanes cannot
    # fill a batch (at most 8 per batch), not earlier, and nothing past that is read
    assert N_DOCS - 4 * 8 < docs <= N_DOCS
    with pytest.raises(MixExhausted, match=f"source 'interleaved' ran out at global batch {len(stopped)} "):
        read(mixture(pat, exhaustion="error"))
    # cycle: three times as far, ratios still exact (no renormalisation), interleaved on its third pass
    cycled = read(mixture(pat), n=3 * len(stopped))
    counts = Counter(s for b in cycled for s in b["sources"])
    for name, share in (("captions", 0.45), ("interleaved", 0.45), ("text", 0.10)):
        assert abs(counts[name] - share * 16 * len(cycled)) < 1
    passes = Counter()
    for b in cycled:
        for p, s in zip(b["passes"], b["sources"]):
            passes[s] = max(passes[s], p)  # 0-based
    assert passes["interleaved"] >= 2 and passes["text"] >= 1


def test_errors_at_start_not_hangs(data):
    _, pat = data
    with pytest.raises(MixError, match="fewer than its 128 readers"):
        MixDataset(mixture(pat, lanes=64), rank=0, world_size=2)
    with pytest.raises(MixError, match="num_workers=3 does not divide"):
        loader(mixture(pat), num_workers=3)
    with pytest.raises(MixError, match="matched no shards"):
        MixDataset(mixture(pat, **{"sources.text.shards": str(data[0] / "nowhere/*.tar")}))


def test_resume_in_fresh_process_equals_uninterrupted(data, tmp_path):
    """Stop after 7 batches, save, restore in a new process with a different worker count, finish
    epoch 0 and read 5 batches of epoch 1: the concatenation equals one uninterrupted run."""
    _, pat = data
    mix = mixture(pat, exhaustion="stop")
    whole = loader(mix, rank=1, world_size=2, num_workers=2, decode=False)
    expect = [keys_of(b) for b in whole] + [keys_of(b) for _, b in zip(range(5), whole)]
    first = loader(mix, rank=1, world_size=2, num_workers=2, decode=False)
    got = [keys_of(b) for _, b in zip(range(7), first)]
    state = first.state_dict()
    assert state["epoch"] == 0 and state["batch"] == 7 and sum(map(sum, state["positions"].values())) == 7 * 8
    (tmp_path / "mix.json").write_text(mix.model_dump_json())
    (tmp_path / "state.json").write_text(json.dumps(state))
    script = textwrap.dedent("""
        import json, sys
        from mmdata.config import Mixture
        from mmdata.mix import loader
        d = sys.argv[1]
        mix = Mixture.model_validate_json(open(f"{d}/mix.json").read())
        ld = loader(mix, rank=1, world_size=2, num_workers=4, decode=False)
        ld.load_state_dict(json.load(open(f"{d}/state.json")))
        keys = lambda b: [f"{s}/{k}" for s, k in zip(b["sources"], b["keys"])]
        out = [keys(b) for b in ld] + [keys(b) for _, b in zip(range(5), ld)]
        json.dump(out, open(f"{d}/rest.json", "w"))
    """)
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, cwd=ROOT, timeout=120)
    rest = json.loads((tmp_path / "rest.json").read_text())
    assert got + rest == expect


def test_resume_mid_pass_in_process_with_decoding(data):
    """Cycle mode, restored mid-way through a later pass, decoded batches: identical tensors."""
    _, pat = data
    mix = mixture(pat)
    whole = read(mix, n=50, decode=True)
    ld = loader(mix, num_workers=0, decode=True)
    head = [b for _, b in zip(range(41), ld)]
    again = loader(mix, num_workers=2, decode=True)
    again.load_state_dict(ld.state_dict())
    tail = [b for _, b in zip(range(9), again)]
    for a, b in zip(whole, head + tail):
        assert a["keys"] == b["keys"] and a["texts"] == b["texts"] and (a["images"] == b["images"]).all()


def test_restore_refusals(data):
    _, pat = data
    ld = loader(mixture(pat), rank=0, world_size=2, num_workers=0, decode=False)
    for _ in zip(range(3), ld):
        pass
    state = ld.state_dict()
    with pytest.raises(MixError, match="re-sharding across ranks is not supported"):
        MixDataset(mixture(pat), rank=0, world_size=1).load_state_dict(state)
    with pytest.raises(MixError, match="changed since the state was saved"):
        MixDataset(mixture(pat, **{"sources.text.weight": 11}, total=None), rank=0, world_size=2).load_state_dict(state)
    with pytest.raises(MixError, match="lanes"):
        MixDataset(mixture(pat, lanes=2), rank=0, world_size=2).load_state_dict(state)


def test_decoded_batches_and_vecap_share(data):
    _, pat = data
    mix = mixture(pat, exhaustion="stop")
    batches = read(mix, decode=True, workers=2)
    n_syn = n_pairs = 0
    for b in batches:
        imgs = b["images"]
        assert imgs.dtype == torch.uint8 and tuple(imgs.shape[1:]) == (3, 16, 16)
        assert len(b["image_sample"]) == len(imgs)
        for row, (kind, slots, cap, status, key) in enumerate(zip(b["kinds"], b["slots"], b["caption"], b["status"], b["keys"])):
            idx = [x for x in slots if isinstance(x, int)]
            assert all(b["image_sample"][i] == row for i in idx)
            assert len(idx) == {"pair": 1, "interleaved": 2, "text": 0}[kind] or status != "success"
            if kind == "pair":
                i = int(key[:5]) * 50 + int(key[5:])
                n_pairs += 1
                n_syn += cap == "synthetic"
                assert slots[1] == (f"syn {i}" if cap == "synthetic" else f"alt {i}")
                assert cap == "alt" or i % 2 == 0  # no synthetic caption: the AltText
                assert (status == "failed_to_decode_image") == (i == BAD_PAIR)
    assert 0.15 < n_syn / n_pairs < 0.35  # share 0.5 of the half that has a VeCap caption


def test_token_weighted_ratios(data):
    _, pat = data
    from mmdata.mix.decode import estimate_tokens

    mix = mixture(pat, unit="tokens")
    tokens = Counter()
    for b in read(mix, n=60):
        for s, x in zip(b["sources"], b["samples"]):
            tokens[s] += estimate_tokens(x, mix.decode)
    total = sum(tokens.values())
    for name, share in (("captions", 0.45), ("interleaved", 0.45), ("text", 0.10)):
        assert abs(tokens[name] / total - share) < 0.03, tokens


# ---------------------------------------------------------------------------------------------
# where shards live


def test_same_stream_from_local_s3_and_http(data, s3, http_root):
    import fsspec

    root, pat = data
    fs = fsspec.filesystem("s3")
    for sub in ("pairs", "docs", "text"):
        fs.put(str(root / sub), f"mmdata-test/mix/{sub}", recursive=True)
        fs_local = fsspec.filesystem("file")
        fs_local.copy(str(root / sub), str(http_root.path / "mix" / sub), recursive=True)
    remote = {
        "s3": {"pairs": "s3://mmdata-test/mix/pairs/{00000..00005}.tar", "docs": "s3://mmdata-test/mix/docs/*.tar",
               "text": "s3://mmdata-test/mix/text/manifest.json"},
        "http": {"pairs": f"{http_root.url}/mix/pairs/{{00000..00005}}.tar",
                 "docs": f"{http_root.url}/mix/docs/{{00000..00003}}.tar", "text": f"{http_root.url}/mix/text/manifest.json"},
    }
    local = [keys_of(b) for b in read(mixture(pat), rank=1, world=2, n=12)]
    for where, p in remote.items():
        ds = MixDataset(mixture(p), rank=1, world_size=2)
        assert ds.fingerprint() == MixDataset(mixture(pat), rank=1, world_size=2).fingerprint()
        assert [keys_of(b) for b in read(mixture(p), rank=1, world=2, n=12, workers=2)] == local, where


def test_cli_mix_stats(data, tmp_path):
    _, pat = data
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(mixture(pat).model_dump(mode="json")))
    res = CliRunner().invoke(app, ["mix-stats", "--mixture", str(path), "--batches", "25", "--world-size", "2"])
    assert res.exit_code == 0, res.output
    rows = {line.split()[0]: line.split() for line in res.output.splitlines()[2:]}
    assert int(rows["captions"][3]) + int(rows["interleaved"][3]) == 2 * 25 * 16 * 0.45
    assert int(rows["text"][3]) == 25 * 16 * 0.10
    assert rows["text"][-1] == "0"  # no repeats: 40 text samples fit in the first pass
    bad = CliRunner().invoke(app, ["mix-stats", "--mixture", str(path), "--set", "lanes=64", "--world-size", "2"])
    assert bad.exit_code == 2 and "fewer than its 128 readers" in bad.output


def test_range_reader_matches_shard_reader(data):
    """A range read (samples before it skipped by seeking) gives exactly that slice of a whole read."""
    from mmdata.samples import count_samples, read_shard

    root, _ = data
    for url in sorted(map(str, root.glob("*/*.tar"))):
        whole = list(read_shard(url))
        assert count_samples(url) == len(whole)
        for lo, hi in ((0, None), (0, 1), (5, 9), (len(whole) - 1, len(whole))):
            assert list(read_shard(url, lo, hi)) == whole[lo:hi]


# ---------------------------------------------------------------------------------------------
# decoding: uint8 batches, normalisation on the device, the image path's quality, one preprocessing
# shared with CLIP scoring, one json parse per sample


def old_float_path(images: torch.Tensor, mean, std) -> torch.Tensor:
    """What batches carried before issue 18: float32 normalised on the CPU."""
    x = images.float().div_(255)
    return x.sub_(torch.tensor(mean).view(1, 3, 1, 1)).div_(torch.tensor(std).view(1, 3, 1, 1))


def test_uint8_batches_normalised_on_device_equal_the_float_path(data):
    from mmdata.mix.decode import Normalize, normalize

    _, pat = data
    mix = mixture(pat)
    plain = read(mix, n=6, decode=True)
    for b in plain:
        imgs = b["images"]
        assert imgs.dtype == torch.uint8 and imgs.is_contiguous() and tuple(imgs.shape[1:]) == (3, 16, 16)
        want = old_float_path(imgs, mix.decode.mean, mix.decode.std)
        got = normalize(imgs, mix, device="cpu")
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-6)
        half = normalize(imgs, (mix.decode.mean, mix.decode.std), dtype=torch.bfloat16)
        assert half.dtype == torch.bfloat16
        torch.testing.assert_close(half.float(), want, atol=0.02, rtol=0.01)
    # the collate hook for CPU users: floats made in the workers, bookkeeping intact, resume unchanged
    ld = loader(mix, num_workers=2, transform=Normalize.of(mix))
    floats = [b for _, b in zip(range(6), ld)]
    assert ld.state_dict()["batch"] == 6 and sum(ld.realized.values()) == 6 * 16
    for a, b in zip(plain, floats):
        assert a["keys"] == b["keys"] and b["images"].dtype == torch.float32
        torch.testing.assert_close(b["images"], normalize(a["images"], mix), atol=0, rtol=0)


def slow_second_worker(worker: int) -> None:
    time.sleep(0.6 * worker)  # worker 1 starts after worker 0's first batch has reached the trainer


def test_persistent_workers_restart_where_the_trainer_stands(data):
    """The same loader (its workers kept) after a `break`, and after load_state_dict to an earlier
    batch; one worker late to start must not begin where the trainer has got to meanwhile."""
    _, pat = data
    mix = mixture(pat)
    want = [keys_of(b) for b in read(mix, n=12)]
    ld = loader(mix, num_workers=2, decode=False, worker_init_fn=slow_second_worker)
    got = [keys_of(b) for _, b in zip(range(5), ld)]
    state = ld.state_dict()
    got += [keys_of(b) for _, b in zip(range(4), ld)]  # a new iter() on the same, persistent, workers
    assert got == want[:9]
    ld.load_state_dict(state)
    assert [keys_of(b) for _, b in zip(range(7), ld)] == want[5:12]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


def test_image_path_quality_against_lanczos_from_full_decode():
    """The fast path (reduced-scale JPEG decode, crop, one antialiased bicubic) against Lanczos from
    the full decode over the same crop, on photo-like JPEGs that exercise every draft scale.

    Threshold, per image: closer to the reference than a JPEG q95 re-save of the reference itself
    (the quality `download` stores shards at): the fast path adds less than the storage noise the
    data already carries. `draft: 2` must reach near-Lanczos (>= 38 dB; measured 40-45).
    """
    from mmdata.config import MixDecodeConfig
    from mmdata.demo.images import photo_like
    from mmdata.images import open_rgb
    from mmdata.mix.decode import Decoder

    s = 96
    fast, fine = Decoder(MixDecodeConfig(image_size=s)), Decoder(MixDecodeConfig(image_size=s, draft=2))
    for i, (w, h) in enumerate([(96, 124), (150, 96), (202, 259), (278, 196), (480, 384), (412, 816)]):
        data = io.BytesIO()
        photo_like(w, h, i).save(data, "JPEG", quality=90)
        data = data.getvalue()
        full = open_rgb(data)
        for dec, floor in ((fast, None), (fine, 38)):
            got = dec.image(data).permute(1, 2, 0).numpy()
            small = open_rgb(data, dec.draft)
            k = round(full.width / small.width)  # DCT scaling: 1, 2, 4 or 8
            m = min(small.size)
            left, top = (small.width - m) // 2, (small.height - m) // 2
            box = (left * k, top * k, min((left + m) * k, full.width), min((top + m) * k, full.height))
            ref = np.asarray(full.resize((s, s), Image.Resampling.LANCZOS, box=box))
            if floor is None:
                resaved = io.BytesIO()
                Image.fromarray(ref).save(resaved, "JPEG", quality=95)
                floor = psnr(np.asarray(Image.open(resaved)), ref)
            assert psnr(got, ref) >= floor, ((w, h), small.size, psnr(got, ref), floor)


def test_clip_scoring_and_sampler_see_the_same_pixels():
    """EXIF-rotated JPEG and PNG, RGBA on transparency: CLIP scoring's decode and the sampler's give
    the same upright, white-flattened pixels (sizes chosen so neither resamples)."""
    import transformers

    from mmdata.config import MixDecodeConfig
    from mmdata.demo.images import encode
    from mmdata.mix.decode import Decoder
    from mmdata.models.clip import ClipEncoder, Preprocess

    s = 32
    vision = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": s, "patch_size": 8}
    text = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2,
            "vocab_size": 99, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    prep = Preprocess.from_processor(transformers.CLIPImageProcessorPil(
        size={"shortest_edge": s}, crop_size={"height": s, "width": s}))
    clip = ClipEncoder(model, prep, None, "cpu", torch.float32)
    sampler = Decoder(MixDecodeConfig(image_size=s))
    rng = np.random.default_rng(0)
    upright = Image.fromarray(rng.integers(0, 256, (48, s, 4), dtype=np.uint8), "RGBA")  # 32 wide, 48 tall
    flat = Image.alpha_composite(Image.new("RGBA", upright.size, (255, 255, 255, 255)), upright).convert("RGB")
    y, x = np.mgrid[0:48, 0:s]
    smooth = Image.fromarray(np.stack([x * 8, y * 5, 255 - y * 5], axis=-1).astype(np.uint8))  # JPEG-friendly
    cases = [(encode(upright, "PNG", orientation=6), np.asarray(flat)[8:40], 0),
             (encode(upright, "PNG", orientation=8), np.asarray(flat)[8:40], 0),
             (encode(smooth, "JPEG", quality=95, orientation=6), np.asarray(smooth)[8:40], 3)]
    for data, want, noise in cases:  # want: the centre square of the upright image, flattened on white
        a = clip.decode(data)
        b = sampler.image(data).permute(1, 2, 0).numpy()
        assert a.shape == b.shape == (s, s, 3) and (a == b).all()
        # lossless PNG: exactly; JPEG: within compression noise (turned the wrong way is ~50 off)
        assert np.abs(a.astype(int) - want).mean() <= noise


def test_each_samples_json_is_parsed_once(data, monkeypatch):
    """Through the loader, decoded and raw: one json.loads per sample, however many uses (kind,
    token estimate, VeCap coin, caption choice, slots)."""
    from mmdata.mix import decode

    _, pat = data
    calls = Counter()

    class CountingJson:
        @staticmethod
        def loads(raw):
            calls[raw] += 1
            return json.loads(raw)

    monkeypatch.setattr(decode, "json", CountingJson)
    mix = mixture(pat)
    for dec in (True, False):
        calls.clear()
        batches = read(mix, n=5, decode=dec)
        assert sum(calls.values()) == 5 * 16  # every sample has a json member
        assert set(calls.values()) == {1}
        if not dec:  # the raw batch hands the parsed records and token estimates on
            assert all(r["key"] == k for b in batches for r, k in zip(b["records"], b["keys"]))
            assert all(t > 0 for b in batches for t in b["tokens"])
