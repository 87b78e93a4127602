"""Hostile shards through the public entry points: `check`, `verify`, `mix-stats` and
`mmdata.mix.loader`. Every case is built here from a good shard set (3 shards of 256 tiny samples,
written with member indexes as the `shards` stage writes them): shard 00001 made empty, only the
end-of-archive blocks, a corrupted header checksum, a non-octal size, a member declaring 10 GiB,
truncated, a directory-escaping name, a flipped byte, missing, or listed with 266 / 246 samples.

Each entry point runs under a timeout; every error is one line naming the shard (and the byte
offset where the damage is in the tar); no sample whose bytes differ from what was written is ever
served; `damaged: skip` skips and counts, never serves.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from mmdata import manifest as mf
from mmdata import samples, tar
from mmdata.cli import app
from mmdata.mix import MixDamaged, loader

ROOT = Path(__file__).resolve().parent.parent
PER, SHARDS, BAD = 256, 3, "00001"
AT = 3  # the damaged sample of shard 00001 in the in-place cases: samples 0-2 before it are good


def sample(i: int) -> dict:
    key = f"{i:06d}"
    text = f"document {i}: " + "word " * (i % 7 + 3)
    return {"__key__": key, "txt": text,
            "json": {"key": key, "kind": "text", "schema_version": 1, "url": f"http://t/{i}", "n_chars": len(text)}}


@dataclass
class Good:
    root: Path
    written: dict[str, dict[str, bytes]]  # key -> {ext: bytes} as written
    entries: dict[str, dict]  # shard name -> manifest entry
    offsets: dict[str, tuple[int, int]]  # member name of shard 00001 -> (header offset, data offset)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Good:
    root = tmp_path_factory.mktemp("hostile") / "good"
    with samples.ShardWriter(str(root), max_samples=PER, members=True) as w:
        for i in range(SHARDS * PER):
            w.write(sample(i))
    shards = [{"name": Path(s.url).name, "count": s.count, "bytes": s.bytes, "sha256": s.sha256,
               "members": Path(s.members).name, "members_sha256": s.members_sha256} for s in w.shards]
    mf.write(str(root), mf.build("text", shards))
    written = {x["__key__"]: {k: v for k, v in x.items() if k not in samples.META_KEYS}
               for x in samples.read_shards(f"{root}/*.tar")}
    offsets = {m.name: (m.offset - tar.BLOCK, m.offset) for m in tar.index(str(root / f"{BAD}.tar"))}
    return Good(root, written, {s["name"]: s for s in shards}, offsets)


# ---------------------------------------------------------------------------------------------
# the cases: (new bytes of shard 00001 or None = missing, manifest entry changes, where the damage is)


def _key(j: int) -> str:
    return f"{PER + j:06d}"


def _rechecksum(head: bytearray) -> bytearray:
    head[148:156] = b" " * 8
    head[148:156] = b"%06o\0 " % sum(head[:512])
    return head


def case_bytes(g: Good, name: str) -> tuple[bytes | None, dict, int | None, str]:
    """(shard bytes, manifest entry overrides, byte offset named in the error or None, words the error has)."""
    raw = (g.root / f"{BAD}.tar").read_bytes()
    head_at, data_at = g.offsets[f"{_key(AT)}.txt"]
    as_file = lambda b: {"bytes": len(b), "sha256": hashlib.sha256(b).hexdigest(), "members": None}
    if name == "empty":  # listed with its count by a manifest written from the file (no index)
        return b"", as_file(b""), 0, "truncated"
    if name == "eof_only":
        b = bytes(tar.RECORD)
        return b, as_file(b), None, f"count: 0 samples, manifest says {PER}"
    if name == "header_checksum":
        b = bytearray(raw)
        b[head_at + 3] ^= 0x01  # a bit of the member's name: the stored checksum no longer matches
        return bytes(b), {}, head_at, "header checksum"
    if name == "size_not_octal":
        b = bytearray(raw)
        b[head_at:head_at + 512] = _rechecksum(bytearray(b[head_at:head_at + 512]))
        b[head_at + 124:head_at + 136] = b"0000000x144\0"  # valid checksum, size field not octal
        b[head_at:head_at + 512] = _rechecksum(bytearray(b[head_at:head_at + 512]))
        return bytes(b), {}, head_at, "malformed size field"
    if name == "declared_10gib":
        cut = g.offsets[f"{_key(AT)}.json"][0]
        b = raw[:cut] + tar.header(f"{_key(AT)}.json", 10 * 2**30) + bytes(4 * tar.BLOCK)
        # the size is in a PAX extended header (a header and a block of records): named is the member's own header
        return b, as_file(b), cut + 2 * tar.BLOCK, "larger than the limit"
    if name == "truncated":  # a partial copy; the manifest still lists the whole shard
        return raw[: data_at + 10], {}, None, f"size: {data_at + 10} bytes, manifest says {len(raw)}"
    if name == "escaping_name":
        out = io.BytesIO()
        with tarfile.open(fileobj=io.BytesIO(raw)) as src, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dst:
            members = src.getmembers()
            for m in members[: 2 * AT]:
                dst.addfile(m, src.extractfile(m))
            info = tarfile.TarInfo("escape/x.txt")
            info.size = 5
            dst.addfile(info, io.BytesIO(b"hello"))
            for m in members[2 * AT:]:
                dst.addfile(m, src.extractfile(m))
        b = out.getvalue()
        return b, as_file(b), g.offsets[f"{_key(AT)}.json"][0], "directory part"
    if name == "flipped_byte":
        b = bytearray(raw)
        b[data_at + 2] ^= 0x20
        return bytes(b), {}, data_at, "differ from what was written"
    if name == "missing":
        return None, {}, None, "missing"
    if name in ("count_266", "count_246"):
        n = int(name[-3:])
        return raw, {"count": n}, None, f"count: {PER} samples, manifest says {n}"
    raise KeyError(name)


CASES = ["empty", "eof_only", "header_checksum", "size_not_octal", "declared_10gib", "truncated", "escaping_name",
         "flipped_byte", "missing", "count_266", "count_246"]
AT_START = {"empty", "eof_only", "declared_10gib", "truncated", "escaping_name", "missing", "count_266", "count_246"}


def build_case(g: Good, name: str, folder: Path, shard: str = BAD) -> Path:
    """`folder` holds the good shards, shard `shard` replaced by the case, and a manifest listing it."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for n, entry in g.entries.items():
        stem = n.removesuffix(".tar")
        if stem != BAD:
            shutil.copy(g.root / n, folder / n)
            shutil.copy(g.root / entry["members"], folder / entry["members"])
            entries.append(dict(entry))
    data, over, _, _ = case_bytes(g, name)
    entry = {**g.entries[f"{BAD}.tar"], "name": f"{shard}.tar", **over}
    if entry.get("members"):
        entry["members"] = f"{shard}{samples.MEMBERS_SUFFIX}"
        shutil.copy(g.root / f"{BAD}{samples.MEMBERS_SUFFIX}", folder / entry["members"])
    else:
        entry.pop("members", None)
        entry.pop("members_sha256", None)
    if data is not None:
        (folder / f"{shard}.tar").write_bytes(data)
    entries.insert(1, entry)
    m = mf.build("text", entries)
    (folder / mf.MANIFEST).write_text(json.dumps(m))
    return folder


def mixture(folder: Path, **over) -> Path:
    spec = {"name": "hostile", "seed": 5, "global_batch": 4, "lanes": 2, "exhaustion": "stop",
            "sources": {"text": {"shards": str(folder / mf.MANIFEST), "weight": 1}}, **over}
    path = folder / "mix.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def one_line(message: str) -> str:
    assert "\n" not in message.strip() and "Traceback" not in message, message
    return message


def assert_names(message: str, g: Good, name: str, shard: str = BAD) -> None:
    _, _, offset, words = case_bytes(g, name)
    assert f"{shard}.tar" in message and words in message, message
    if offset is not None:
        assert f"byte {offset}" in message, message


def served_right(g: Good, batch_samples: list[dict]) -> set[str]:
    """Every served sample is byte for byte what was written; returns their keys."""
    keys = set()
    for x in batch_samples:
        fields = {k: v for k, v in x.items() if k not in samples.META_KEYS}
        assert fields == g.written[x["__key__"]], f"sample {x['__key__']} served with other bytes"
        keys.add(x["__key__"])
    return keys


# ---------------------------------------------------------------------------------------------
# verify: one manifest holding every case as its own shard


@pytest.mark.timeout(240)
def test_verify_names_every_hostile_shard_with_structure_counts_and_bytes(good, tmp_path):
    folder = tmp_path / "all"
    for i, name in enumerate(CASES):
        build_case(good, name, tmp_path / name)
        shutil.copy(tmp_path / name / mf.MANIFEST, tmp_path / f"{name}.json")
    # one folder, one manifest: the good shards once, then every case as shard 1xxxx
    folder.mkdir()
    entries = [dict(good.entries[f"{s}.tar"]) for s in ("00000", "00002")]
    for s in ("00000", "00002"):
        shutil.copy(good.root / f"{s}.tar", folder)
        shutil.copy(good.root / f"{s}{samples.MEMBERS_SUFFIX}", folder)
    for i, name in enumerate(CASES):
        src = json.loads((tmp_path / f"{name}.json").read_text())["shards"][1]
        new = f"1{i:04d}"
        if (tmp_path / name / f"{BAD}.tar").exists():
            shutil.copy(tmp_path / name / f"{BAD}.tar", folder / f"{new}.tar")
        if src.get("members"):
            shutil.copy(tmp_path / name / src["members"], folder / f"{new}{samples.MEMBERS_SUFFIX}")
            src["members"] = f"{new}{samples.MEMBERS_SUFFIX}"
        entries.append({**src, "name": f"{new}.tar"})
    (folder / mf.MANIFEST).write_text(json.dumps(mf.build("text", entries)))

    out = subprocess.run([sys.executable, "-m", "mmdata", "verify", "-m", str(folder)], capture_output=True,
                         text=True, cwd=ROOT, timeout=150, check=False)
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert "Traceback" not in out.stderr
    assert lines[-1] == f"{len(CASES)} of {len(CASES) + 2} shards failed verification"
    for i, name in enumerate(CASES):
        line = one_line(next(ln for ln in lines if f"1{i:04d}.tar" in ln))
        assert_names(line.replace(f"1{i:04d}.tar", f"{BAD}.tar"), good, name)
    assert not any(s in out.stderr for s in ("00000.tar", "00002.tar"))

    # --quick: presence, sizes and counts without reading data; the in-place damage needs the full read
    quick = subprocess.run([sys.executable, "-m", "mmdata", "verify", "--quick", "-m", str(folder)],
                           capture_output=True, text=True, cwd=ROOT, timeout=150, check=False)
    assert quick.returncode == 1
    for i, name in enumerate(CASES):
        assert (f"1{i:04d}.tar" in quick.stderr) == (name in AT_START), (name, quick.stderr)


# ---------------------------------------------------------------------------------------------
# the sampler: mmdata.mix.loader and mix-stats, one case at a time


@pytest.mark.timeout(280)
def test_loader_and_mix_stats_stop_on_every_hostile_shard_serving_nothing_wrong(good, tmp_path):
    runner = CliRunner()
    for name in CASES:
        folder = build_case(good, name, tmp_path / name)
        mix = mixture(folder)
        served: list[dict] = []
        with pytest.raises(MixDamaged) as err:
            for batch in loader(mix, num_workers=0, decode=False):
                served += batch["samples"]
        message = one_line(str(err.value))
        assert_names(message, good, name)
        keys = served_right(good, served)
        if name in AT_START:
            assert not served, f"{name}: a batch was served before the catalogue check"
        else:  # found while reading: the samples before the damage may be served, the damaged one never
            assert _key(AT) not in keys, name

        result = runner.invoke(app, ["mix-stats", "--mixture", str(mix), "--batches", str(3 * PER)])
        assert result.exit_code == 1, (name, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert_names(one_line(result.output.removeprefix("error: ")), good, name)


@pytest.mark.timeout(240)
def test_damage_found_while_reading_reaches_the_trainer_and_the_shell_as_one_line(good, tmp_path):
    folder = build_case(good, "flipped_byte", tmp_path / "flip")
    mix = mixture(folder)
    served: list[dict] = []
    with pytest.raises(MixDamaged) as err:  # from a DataLoader worker: no worker traceback wrapped in it
        for batch in loader(mix, num_workers=2, decode=True):
            served += [{"__key__": k} for k in batch["keys"]]
    assert_names(one_line(str(err.value)), good, "flipped_byte")
    assert _key(AT) not in {x["__key__"] for x in served}

    out = subprocess.run([sys.executable, "-m", "mmdata", "mix-stats", "-m", str(mix), "-n", "1000"],
                         capture_output=True, text=True, cwd=ROOT, timeout=150, check=False)
    assert out.returncode == 1 and out.stdout == ""
    assert_names(one_line(out.stderr.strip().removeprefix("error: ")), good, "flipped_byte")

    bad_yaml = folder / "typo.yaml"
    bad_yaml.write_text(mix.read_text().replace("exhaustion:", "exhaustoin:"))
    out = subprocess.run([sys.executable, "-m", "mmdata", "mix-stats", "-m", str(bad_yaml)],
                         capture_output=True, text=True, cwd=ROOT, timeout=150, check=False)
    assert out.returncode == 2 and "exhaustoin" in one_line(out.stderr.strip()), out.stderr


@pytest.mark.timeout(240)
def test_damaged_skip_skips_and_counts_never_serves(good, tmp_path):
    runner = CliRunner()
    # found while reading: the rest of the damaged shard's range is skipped and counted
    folder = build_case(good, "flipped_byte", tmp_path / "flip")
    mix = mixture(folder, damaged="skip", exhaustion="cycle", steps_per_epoch=3 * PER // 4)
    ld = loader(mix, num_workers=0, decode=False)
    served = [x for batch in ld for x in batch["samples"]]
    keys = served_right(good, served)
    bad_keys = {_key(j) for j in range(AT, PER)}
    assert not keys & bad_keys and {_key(j) for j in range(AT)} <= keys
    assert len(ld.damaged) >= 1 and all(f"{BAD}.tar" in d["shard"] and d["skipped"] > 0 for d in ld.damaged)
    assert all(f"byte {good.offsets[f'{_key(AT)}.txt'][1]}" in d["error"] for d in ld.damaged)
    assert keys >= set(good.written) - bad_keys  # every good sample served in the epoch
    result = runner.invoke(app, ["mix-stats", "-m", str(mix), "-n", str(3 * PER // 4)])
    assert result.exit_code == 0, result.output
    assert f"skipped (damaged: skip, never served): {folder}/{BAD}.tar" in result.output

    # found before the first batch: the shard leaves the catalogue, counted with its samples
    folder = build_case(good, "missing", tmp_path / "missing")
    mix = mixture(folder, damaged="skip")
    ld = loader(mix, num_workers=0, decode=False)
    keys = served_right(good, [x for batch in ld for x in batch["samples"]])
    assert keys == set(good.written) - {_key(j) for j in range(PER)}  # the rest exactly, once each
    assert [(Path(d["shard"]).name, d["skipped"]) for d in ld.damaged] == [(f"{BAD}.tar", PER)]

    # skip, but a reader runs dry before the planned end of an epoch that forbids a second pass: stops
    folder = build_case(good, "flipped_byte", tmp_path / "flip-stop")
    with pytest.raises(MixDamaged, match="after skipping damaged shards"):
        for _ in loader(mixture(folder, damaged="skip"), num_workers=0, decode=False):
            pass


@pytest.mark.timeout(240)
def test_glob_source_without_manifest_checks_structure_before_the_first_batch(good, tmp_path):
    for name in ("truncated", "header_checksum"):
        folder = build_case(good, name, tmp_path / name)
        (folder / mf.MANIFEST).unlink()
        mix = mixture(folder, sources={"text": {"shards": f"{folder}/*.tar", "weight": 1}})
        with pytest.raises(MixDamaged) as err:
            loader(mix, num_workers=0, decode=False)
        message = one_line(str(err.value))
        assert f"{BAD}.tar" in message and "damaged tar at byte" in message, message


# ---------------------------------------------------------------------------------------------
# check: a download shard set with a hostile tar per shard, and one invalid record


CHECK_CASES = ["empty", "header_checksum", "size_not_octal", "declared_10gib", "truncated", "escaping_name"]


@pytest.mark.timeout(280)
def test_check_fails_naming_each_hostile_shard_and_each_invalid_record(good, tmp_path):
    data = tmp_path / "set"
    data.mkdir()

    def add(shard: str, raw: bytes | None, rows: list[str]) -> None:
        if raw is not None:
            (data / f"{shard}.tar").write_bytes(raw)
        pd.DataFrame({"key": rows, "status": "success", "error_message": None}).to_parquet(data / f"{shard}.parquet")
        (data / f"{shard}_stats.json").write_text(json.dumps({"count": len(rows)}))

    keys = [_key(j) for j in range(PER)]
    add("00000", (good.root / "00000.tar").read_bytes(), [f"{j:06d}" for j in range(PER)])
    for i, name in enumerate(CHECK_CASES):
        add(f"1{i:04d}", case_bytes(good, name)[0], keys)
    with samples.ShardWriter(str(data / "w"), max_samples=PER) as w:  # a record missing a required field
        for i in range(2):
            x = sample(i)
            if i == 1:
                del x["json"]["n_chars"]
            w.write(x)
    add("20000", (data / "w" / "00000.tar").read_bytes(), ["000000", "000001"])
    shutil.rmtree(data / "w")
    recipe = tmp_path / "check.yaml"
    recipe.write_text(yaml.safe_dump({"name": "hostile", "workdir": str(tmp_path / "work"), "check": {"input": str(data)},
                                      "engine": {"n_workers": 1, "processes": False, "retries": 0, "progress": False}}))
    out = subprocess.run([sys.executable, "-m", "mmdata", "check", "--config", str(recipe)], capture_output=True,
                         text=True, cwd=ROOT, timeout=200, check=False)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    for i, name in enumerate(CHECK_CASES):
        lines = [ln for ln in out.stderr.splitlines() if f"shard 1{i:04d} FAILED" in ln]  # the summary's line
        assert len(lines) == 1 and f"1{i:04d}.tar" in lines[0], (name, out.stderr)
        _, _, offset, words = case_bytes(good, name)
        assert (words if name != "truncated" else "truncated") in lines[0], lines[0]
        assert f"damaged tar at byte {offset if offset is not None else ''}" in lines[0], lines[0]
    invalid = [ln for ln in out.stderr.splitlines() if "20000" in ln]
    assert invalid and "1 invalid records, first 000001" in invalid[0] and "n_chars" in invalid[0], out.stderr
    assert not [ln for ln in out.stderr.splitlines() if "00000:" in ln or "00000 " in ln]
