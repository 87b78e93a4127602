"""The `text` stage through its CLI on real pages and WARCs; the check stage on its output."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import yaml

from mmdata import fsio, samples
from mmdata.config import load
from mmdata.stages import check
from mmdata.warc import read_warc


def test_text_cli_real_pages(shared_data, client, tmp_path):
    recipe = tmp_path / "text.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "t", "workdir": str(tmp_path / "work"),
        "engine": {"n_workers": 1, "progress": False},
        "text": {"input": [str(shared_data / "html" / "*.html"), str(shared_data / "warc" / "sample-000*.warc.gz")],
                 "files_per_shard": 9},
        "check": {"input": str(tmp_path / "work" / "text")},
    }))
    res = subprocess.run([sys.executable, "-m", "mmdata", "text", "--config", str(recipe)],
                         capture_output=True, text=True, timeout=240, check=False)
    assert res.returncode == 0, res.stderr
    assert "funnel" in res.stdout and "lang_not_en" in res.stdout
    out = tmp_path / "work" / "text"
    meta = pd.concat([fsio.read_parquet(f) for f in fsio.expand(f"{out}/0*.parquet")], ignore_index=True)
    n_warc = sum(1 for f in (shared_data / "warc").glob("sample-000*.warc.gz") for _ in read_warc(str(f)))
    assert len(meta) == 17 + n_warc and meta["key"].is_unique
    docs = {s["json"]["url"]: s for f in fsio.expand(f"{out}/0*.tar") for s in map(samples.decode, samples.read_shard(f))}
    nature = docs["https://www.nature.com/articles/d41586-019-02790-3"]["txt"]
    assert "The Five-hundred-meter Aperture Spherical Radio Telescope (FAST) in southern China" in nature
    assert nature.index("The world’s largest single-dish") < nature.index("During the testing phase, the telescope")
    assert "Google Scholar" not in nature  # author-link boilerplate is not article text
    by_url = meta.set_index("url")
    assert by_url.loc["https://correctiv.org/aktuelles/neue-rechte/2019/05/14/wir-haben-bereits-die-zusage/",
                      "drop_reason"] == "lang_not_en"
    # allenai.org was crawled three times: one copy kept, the others are duplicates of it
    ai = meta[meta["url"] == "https://allenai.org/"]
    assert (ai["status"] == "success").sum() <= 1 and ai["drop_reason"].str.startswith("duplicate_url_of:").sum() == 2
    funnel = fsio.read_json(str(out / "_funnel.json"))
    assert funnel["records"] == len(meta) and funnel["kept"] == len(docs) > 5
    rep = check.run(load(recipe), client=client)
    assert rep.ok and rep.totals().get("invalid", 0) == 0 and rep.totals()["count"] == len(meta)
