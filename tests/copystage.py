"""A small real stage for engine tests: copies each input shard's samples into the stage output.

Test stages are shipped to Dask workers by value (workers cannot import the tests folder).
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path

import cloudpickle
import pandas as pd
from PIL import Image

from mmdata import fsio, samples
from mmdata.engine import Shard, Stage


class Copy(Stage):
    name = "copy"

    def __init__(self, delay: float = 0.0, fail_on: tuple = (), flaky_dir: str | None = None, setup_log: str | None = None):
        self.delay, self.fail_on, self.flaky_dir, self.setup_log = delay, tuple(fail_on), flaky_dir, setup_log

    def setup(self) -> None:
        if self.setup_log:
            with open(self.setup_log, "a") as f:
                f.write(f"{os.getpid()}\n")

    def process(self, shard: Shard, out: str) -> dict:
        if self.flaky_dir:
            marker = os.path.join(self.flaky_dir, f"{shard.id}.attempts")
            with open(marker, "a") as f:
                f.write("x")
            if Path(marker).read_text() == "x":
                raise ConnectionError(f"transient failure on first attempt of {shard.id}")
        if shard.id in self.fail_on:
            with open(os.path.join(self.flaky_dir or "/tmp", f"{shard.id}.failures"), "a") as f:
                f.write("x")
            raise ValueError(f"bad data in shard {shard.id}")
        keys = []
        with samples.TarSink(fsio.join(out, f"{shard.id}.tar")) as sink:
            for sample in samples.read_shard(shard.input.tar):
                time.sleep(self.delay)
                sink.write({k: v for k, v in sample.items() if k != "__url__"})
                keys.append(sample["__key__"])
        meta = fsio.read_parquet(shard.input.meta)
        fsio.write_parquet(fsio.join(out, f"{shard.id}.parquet"), meta)
        ok = int((meta["status"] == "success").sum())
        return {"count": len(meta), "successes": ok, "status_dict": meta["status"].value_counts().to_dict(), "copied": len(keys)}


cloudpickle.register_pickle_by_value(__import__(__name__))


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24 + seed % 7, 16), ((seed * 37) % 256, (seed * 91) % 256, 80)).save(buf, "JPEG")
    return buf.getvalue()


def make_pairs(dest: str, n_shards: int = 4, per: int = 5, fail_every: int = 4) -> list[str]:
    """A download-format shard set: every `fail_every`-th record failed, the rest pairs."""
    ids = []
    for s in range(n_shards):
        sid = f"{s:05d}"
        rows = []
        with samples.TarSink(fsio.join(dest, f"{sid}.tar")) as sink:
            for i in range(per):
                key = f"{sid}{i:04d}"
                url = f"http://img.example/{key}.jpg"
                if fail_every and i % fail_every == fail_every - 1:
                    rows.append({"key": key, "status": "failed_to_download", "error_message": "HTTP 404", "url": url, "caption": "x"})
                    continue
                data = jpeg(s * per + i)
                rec = {
                    "key": key, "kind": "pair", "schema_version": 1, "url": url, "caption": f"a photo {key}",
                    "status": "success", "error_message": None, "width": 24, "height": 16,
                    "original_width": 24, "original_height": 16, "sha256": hashlib.sha256(data).hexdigest(), "exif": None,
                }
                sink.write({"__key__": key, "jpg": data, "txt": rec["caption"], "json": rec})
                rows.append({k: rec[k] for k in ("key", "status", "error_message", "url", "caption")})
        fsio.write_parquet(fsio.join(dest, f"{sid}.parquet"), pd.DataFrame(rows))
        ok = sum(r["status"] == "success" for r in rows)
        fsio.write_json(fsio.join(dest, f"{sid}_stats.json"), {
            "shard": sid, "stage": "download", "schema_version": 1, "count": len(rows), "successes": ok,
            "status_dict": {"success": ok, "failed_to_download": len(rows) - ok}, "duration": 0.0,
        })
        ids.append(sid)
    return ids
