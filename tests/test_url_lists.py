"""Hostile URL lists: every input row ends in the output exactly once with a status, an unreadable
file stops the run with one line naming it (exit 2), memory stays bounded on a 1 GB line, and
every shard of the set has one parquet schema (read as one table by pyarrow and duckdb)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml

from mmdata import inputs
from mmdata.config import Pipeline
from mmdata.demo.server import DemoServer
from mmdata.demo.urls import IMAGE_HOSTS, fault_url
from mmdata.stages import download

ROOT = Path(__file__).resolve().parents[1]
OTHER = "photos.example.test"  # any non-demo host: the server answers image paths with stand-ins
H1 = IMAGE_HOSTS[0]


@pytest.fixture(scope="module")
def server():
    with DemoServer() as srv:
        yield srv


def recipe(tmp: Path, server, input, **download) -> dict:
    fetch = {"connect_to": {"*": f"127.0.0.1:{server.port}"}, "retries": 0, "robots_txt": False,
             "allow": [f"*.{OTHER.split('.', 1)[1]}", "*.demo.mmdata.test"]}  # names only: IP literals stay guarded
    fetch |= download.pop("fetch", {})
    return {"name": "t", "workdir": str(tmp / "work"), "engine": {"progress": False},
            "download": {"input": str(input), "samples_per_shard": 6, "fetch": fetch, **download}}


def meta_of(pipe: Pipeline) -> pd.DataFrame:
    out = download.output(pipe)
    return pd.concat([pd.read_parquet(p) for p in sorted(Path(out).glob("*.parquet"))], ignore_index=True)


def test_bad_rows_become_statuses_and_the_set_has_one_schema(tmp_path, server, client):
    ok = [f"http://{OTHER}/img/{i}.jpg" for i in range(3)]
    folder = tmp_path / "in"
    folder.mkdir()
    # csv: bad bytes in a url and in a caption, a line with too many fields, a url over the cap,
    # numeric IPv4 forms of 127.0.0.1 (SSRF refusals, not retryable failures)
    long_url = "http://" + OTHER + "/" + "a" * 300
    (folder / "a.csv").write_bytes(b"\n".join([
        b"url,caption,n",
        ok[0].encode() + b",caf\xe9 latin-1 caption,1",
        b"http://" + OTHER.encode() + b"/\xff\xfe.jpg,bad url bytes,2",
        ok[1].encode() + b",too,many,fields,3",
        long_url.encode() + b",too long,4",
        b"http://2130706433/a.jpg,decimal,5",
        b"http://127.1/b.jpg,shorthand,6",
        b"http://017700000001/c.jpg,octal,7",
        b"",
    ]))
    # jsonl: an integer url, a line that is no JSON, one that is no object, a line over
    # max_line_bytes, a row without url, and a carried column that is an int here and text there
    lines = [json.dumps({"url": 12345, "caption": "int", "n": 9}), "{not json", "[1, 2]",
             json.dumps({"url": ok[0], "caption": "x" * 5000, "n": 10}), json.dumps({"caption": "no url", "n": 11}),
             json.dumps({"url": fault_url(H1, "redirect_loop", "l.jpg"), "n": 12}),
             json.dumps({"url": fault_url(H1, "redirect", "s.jpg", to="http://10.1.2.3/x.jpg"), "n": 13}),
             json.dumps({"url": fault_url(H1, "404", "gone.jpg"), "n": 14}), json.dumps({"url": ok[2], "caption": "fine", "n": 8})]
    (folder / "b.jsonl").write_text("\n".join(lines) + "\n")
    # txt: a url with bytes that are not UTF-8, blank lines (no rows), good urls
    (folder / "c.txt").write_bytes(b"\n".join([ok[1].encode(), b"", b"http://" + OTHER.encode() + b"/\x80.jpg", ok[2].encode()]))
    pipe = Pipeline.model_validate(recipe(tmp_path, server, folder, max_url_length=200, max_line_bytes=4096))
    report = download.run(pipe, client=client)
    assert report.ok, report.summary()

    meta = meta_of(pipe)
    expected = [  # (url or None, status, error substring) in input order
        (ok[0], "success", None), (None, "skipped_invalid_url", "a.csv: line 3: url has bytes that are not UTF-8"),
        (ok[1], "skipped_invalid_url", "a.csv: line 4: 5 fields, the header has 3"),
        (long_url[:200], "skipped_invalid_url", f"a.csv: line 5: url of {len(long_url)} characters > max_url_length 200"),
        ("http://2130706433/a.jpg", "skipped_ssrf", "127.0.0.1"), ("http://127.1/b.jpg", "skipped_ssrf", "127.0.0.1"),
        ("http://017700000001/c.jpg", "skipped_ssrf", "127.0.0.1"),
        ("12345", "skipped_invalid_url", "b.jsonl: line 1: url is a int, not a string"),
        (None, "skipped_invalid_url", "b.jsonl: line 2: not JSON"), (None, "skipped_invalid_url", "b.jsonl: line 3: a JSON list"),
        (None, "skipped_invalid_url", "b.jsonl: line 4: longer than max_line_bytes (4096)"),
        (None, "skipped_invalid_url", "b.jsonl: line 5: no url"),
        (fault_url(H1, "redirect_loop", "l.jpg"), "failed_to_download", "too many redirects"),
        (None, "skipped_ssrf", "10.1.2.3"), (fault_url(H1, "404", "gone.jpg"), "failed_to_download", "404"),
        (ok[2], "success", None),
        (ok[1], "success", None), (None, "skipped_invalid_url", "c.txt: line 3: url has bytes that are not UTF-8"),
        (ok[2], "success", None),
    ]
    assert len(meta) == len(expected) and meta["key"].is_unique  # every row exactly once, in input order
    assert list(meta["status"]) == [s for _, s, _ in expected], meta[["url", "status", "error_message"]]
    for (url, _, err), (_, row) in zip(expected, meta.iterrows()):
        if url is not None:
            assert row["url"] == url
        if err is not None:
            assert err in row["error_message"], (err, row["error_message"])
    assert meta.loc[0, "caption"] == "caf\ufffd latin-1 caption"  # a caption's bad bytes stay visible, the row stays
    # http_status is that of the last response: the loop's redirect, and the redirect into a private address
    assert list(meta.loc[12:14, "http_status"]) == [302, 302, 404]
    assert meta.loc[4:6, "http_status"].isna().all()  # refused before any request: no response to name
    assert [None if pd.isna(v) else v for v in meta["n"]] == ["1", "2", "many", "4", "5", "6", "7", "9", None, None, None, "11", "12", "13",
                                      "14", "8", None, None, None]  # int in jsonl, text in csv: one text column

    # one schema for every shard (an all-failed shard included), readable as one table
    out = Path(download.output(pipe))
    files = sorted(out.glob("*.parquet"))
    assert len(files) == 4 and "success" not in set(pd.read_parquet(files[1])["status"])  # shard 1 has no success
    schemas = {str(pq.read_schema(f)) for f in files}
    assert len(schemas) == 1, schemas
    table = ds.dataset([str(f) for f in files], format="parquet").to_table()
    assert table.num_rows == len(expected) and table.schema.field("width").type == "int64"
    import duckdb

    got = duckdb.sql(f"SELECT status, count(*) AS n FROM read_parquet('{out}/*.parquet') GROUP BY status").fetchall()
    assert dict(got) == dict(meta["status"].value_counts())

    # --retry-failed redoes only shards with failed_* rows: SSRF refusals and invalid rows are final
    again = download.run(pipe, client=client, retry_failed=True)
    assert again.ok and list(again.done) == ["00002"] and again.skipped == ["00000", "00001", "00003"]


def cli(config: dict, tmp: Path) -> subprocess.CompletedProcess:
    (tmp / "r.yaml").write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "mmdata", "download", "--config", str(tmp / "r.yaml")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def test_unreadable_file_exits_2_with_one_line(tmp_path, server):
    path = tmp_path / "list.csv"
    path.write_text("link,caption\nhttp://x/1.jpg,a\n")
    proc = cli(recipe(tmp_path, server, path), tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{path}: no url column 'url' (columns: link, caption)" in lines[0], proc.stderr


def test_unreadable_inputs_through_the_library(tmp_path):
    def first(path, **kw):
        return next(inputs.rows(str(path), **kw))

    (tmp_path / "empty.csv").write_bytes(b"")
    assert list(inputs.rows(str(tmp_path / "empty.csv"))) == []  # no header, no rows
    cfg = Pipeline.model_validate({"name": "t", "workdir": str(tmp_path / "w"),
                                   "download": {"input": str(tmp_path / "empty.csv")}}).download
    with pytest.raises(inputs.InputError, match="no rows in"):
        download.partition(cfg, str(tmp_path / "w" / "download"))
    pd.DataFrame({"link": pd.Series([], dtype=str)}).to_parquet(tmp_path / "zero.parquet")
    with pytest.raises(inputs.InputError, match="zero.parquet: no url column 'url'"):
        first(tmp_path / "zero.parquet")  # no rows, but its columns still tell
    (tmp_path / "header.csv").write_text("url,caption\n")
    assert first(tmp_path / "header.csv").num_rows == 0
    (tmp_path / "empty.parquet").write_bytes(b"")
    with pytest.raises(inputs.InputError, match="empty.parquet: not a readable parquet file"):
        first(tmp_path / "empty.parquet")
    (tmp_path / "bad.csv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(inputs.InputError, match="bad.csv.gz: cannot read"):
        first(tmp_path / "bad.csv.gz")
    (tmp_path / "doc.json").write_text('{"url": "http://x/"}')
    with pytest.raises(inputs.InputError, match="doc.json: a JSON dict, expected an array"):
        first(tmp_path / "doc.json")
    pd.DataFrame({"url": [1, 2]}).to_parquet(tmp_path / "ints.parquet")
    assert first(tmp_path / "ints.parquet", caption_col=None).column(inputs.ROW_ERROR).to_pylist() == [
        f"{tmp_path}/ints.parquet: row {i}: url column is int64, not text" for i in (1, 2)]


@pytest.mark.slow
def test_a_1gb_line_is_read_in_bounded_memory(tmp_path):
    """A 1 GB single-line list costs about max_line_bytes of memory, not the line (it was > 9 GB)."""
    path = tmp_path / "huge.txt"
    with open(path, "wb") as f:  # sparse: 1 GB of NULs after the scheme, without writing them
        f.write(b"http://h/")
        f.seek(1 << 30)
        f.write(b"\nhttp://h/ok.jpg\n")
    script = textwrap.dedent(f"""
        import resource
        from mmdata import inputs
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = next(inputs.rows({str(path)!r}))
        grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(t.column("url").to_pylist()[1], t.column(inputs.ROW_ERROR).to_pylist()[0], grew // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    url, *error, grew_mb = out.stdout.split()
    assert url == "http://h/ok.jpg" and " ".join(error) == f"{path}: line 1: longer than max_line_bytes (1048576)"
    assert int(grew_mb) < 64, out.stdout  # was > 9 GB
