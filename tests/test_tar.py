"""The one tar codec: every kind of damage is an error naming the shard and the byte offset, read
through each public reader (samples.read_shard local and over HTTP, gzip streams, the index and
byte-range reads of the shards stage); nothing hangs and no sample is made up."""

import gzip
import io
import tarfile

import pytest

from mmdata import samples, tar
from mmdata.tar import DamagedShard


def sample(i: int, size: int = 700) -> dict:
    return {"__key__": f"{i:09d}", "jpg": bytes([i % 251]) * size, "txt": f"caption {i}", "json": {"key": f"{i:09d}"}}


@pytest.fixture
def good(tmp_path) -> tuple:
    """A 4-sample shard written by mmdata, and its bytes."""
    path = tmp_path / "00003.tar"
    with samples.TarSink(str(path)) as sink:
        for i in range(4):
            sink.write(sample(i))
    return path, path.read_bytes()


def offsets(data: bytes) -> list[int]:
    """Header offsets of every member, by tarfile (the reference reader)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        return [m.offset for m in t.getmembers()]


def read_all(url: str, **kw) -> list[dict]:
    return list(samples.read_shard(url, **kw))


def damaged(path, data: bytes, match: str, **kw) -> DamagedShard:
    path.write_bytes(data)
    with pytest.raises(DamagedShard, match=match) as e:
        read_all(str(path), **kw)
    assert str(path) in str(e.value) and "damaged tar at byte" in str(e.value)
    return e.value


def test_round_trip_index_and_ranges_agree_with_tarfile(good):
    path, _ = good
    got = read_all(str(path))
    assert [s["__key__"] for s in got] == [f"{i:09d}" for i in range(4)]
    assert got[2]["jpg"] == sample(2)["jpg"]
    with tarfile.open(path) as t:
        ref = {m.name: (m.offset_data, m.size) for m in t.getmembers()}
    index = samples.index_shard(str(path))
    assert {f"{k}.{ext}": (off, n) for k, parts in index.items() for ext, off, n in parts} == ref
    jpg = next((off, n) for ext, off, n in index["000000001"] if ext == "jpg")
    assert tar.read_ranges(str(path), [jpg]) == [sample(1)["jpg"]]
    assert samples.count_samples(str(path)) == 4
    assert read_all(str(path), start=1, stop=3) == got[1:3]


def test_header_checksum_size_and_garbage_are_named_with_their_offset(good, tmp_path):
    path, data = good
    heads = offsets(data)
    bad = bytearray(data)
    bad[heads[5] + 3] ^= 0x20  # a flipped bit in the 6th member's name
    assert damaged(path, bytes(bad), "checksum").offset == heads[5]

    bad = bytearray(data)  # a size field that is not a number, with a checksum that matches it
    bad[heads[2] + 124 : heads[2] + 136] = b"99999999999\0"
    head = bytes(bad[heads[2] : heads[2] + 512])
    bad[heads[2] + 148 : heads[2] + 156] = b"%06o\0 " % (sum(head[:148]) + 256 + sum(head[156:]))
    assert damaged(path, bytes(bad), "malformed size").offset == heads[2]

    damaged(tmp_path / "junk.tar", b"this is not a tar file at all" * 100, "checksum")


def test_truncation_anywhere_is_an_error_locally_over_http_and_in_gzip(good, tmp_path, http_root):
    path, data = good
    heads = offsets(data)
    gz = tmp_path / "cut.tar.gz"
    # inside a header, inside a member's data, and at a member boundary (no end-of-archive block)
    for cut in (heads[4] + 100, heads[4] + 512 + 10, heads[4]):
        short = data[:cut]
        assert damaged(path, short, "truncated").offset <= cut
        (http_root.path / "cut.tar").write_bytes(short)  # streamed: no seeking, no known size
        with pytest.raises(DamagedShard, match="truncated"):
            read_all(f"{http_root.url}/cut.tar")
        gz.write_bytes(gzip.compress(short))
        with pytest.raises(DamagedShard, match="truncated"):
            read_all(str(gz))
    gz.write_bytes(gzip.compress(data)[:-200])  # the compressed stream itself cut short
    with pytest.raises(DamagedShard, match="compressed stream damaged|truncated"):
        read_all(str(gz))
    with pytest.raises(DamagedShard, match="truncated"):
        tar.read_ranges(str(path), [(heads[4], 100), (len(data) - 10, 100)])


def _tar(tmp_path, entries) -> bytes:
    """A tar made by tarfile: (name, data) for a regular file, (name, [type]) for other kinds."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, what in entries:
            info = tarfile.TarInfo(name)
            if not isinstance(what, list):
                info.size = len(what)
                t.addfile(info, io.BytesIO(what))
            else:
                info.type = what[0]
                info.linkname = "/etc/passwd"
                t.addfile(info)
    return buf.getvalue()


@pytest.mark.parametrize("entry, why", [
    (("link.txt", [tarfile.SYMTYPE]), "symbolic link"),
    (("hard.txt", [tarfile.LNKTYPE]), "hard link"),
    (("dev.txt", [tarfile.CHRTYPE]), "character device"),
    (("folder", [tarfile.DIRTYPE]), "directory"),
    (("escape/x.txt", b"a regular file under a folder"), "directory part"),
    (("../up.txt", b"x"), "directory part"),
    (("/etc/passwd.txt", b"x"), "directory part"),
    (("README", b"no extension"), "no extension"),
    ((".hidden.txt", b"x"), "no key"),
])
def test_links_devices_folders_and_odd_names_are_refused(tmp_path, entry, why):
    data = _tar(tmp_path, [("000000001.txt", b"fine"), entry, ("000000002.txt", b"after")])
    err = damaged(tmp_path / "00009.tar", data, why)
    assert err.offset == offsets(data)[1]


def test_member_size_cap_and_repeated_keys(tmp_path, monkeypatch):
    data = _tar(tmp_path, [("000000001.jpg", bytes(5000)), ("000000001.txt", b"x")])
    path = tmp_path / "00001.tar"
    damaged(path, data, "larger than the limit of 4096", limit=4096)
    monkeypatch.setenv("MMDATA_TAR_MAX_MEMBER", "4096")
    damaged(path, data, "larger than the limit")
    monkeypatch.delenv("MMDATA_TAR_MAX_MEMBER")
    assert len(read_all(str(path))) == 1
    split = _tar(tmp_path, [("000000001.txt", b"a"), ("000000002.txt", b"b"), ("000000001.jpg", b"c")])
    damaged(path, split, "appears again")
    twice = _tar(tmp_path, [("000000001.txt", b"a"), ("000000001.txt", b"b")])
    damaged(path, twice, "appears twice")


def test_foreign_tars_read_pickle_stays_bytes_and_long_names_work(tmp_path):
    """What other writers make (ustar, GNU long names, PAX) reads the same; nothing is unpickled."""
    long = "k" * 150
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
            for name, blob in (("000000001.pyd", b"\x80\x04K\x01."), ("000000001.txt", b"t"), (f"{long}.txt", b"x")):
                if fmt == tarfile.USTAR_FORMAT and name.startswith("k"):
                    continue
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                t.addfile(info, io.BytesIO(blob))
        path = tmp_path / f"{fmt}.tar"
        path.write_bytes(buf.getvalue())
        got = [samples.decode(s) for s in read_all(str(path))]
        assert got[0] == {"__key__": "000000001", "__url__": str(path), "pyd": b"\x80\x04K\x01.", "txt": "t"}
        assert fmt == tarfile.USTAR_FORMAT or got[1]["__key__"] == long
