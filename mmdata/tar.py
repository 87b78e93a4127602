"""The tar codec every shard goes through: write, stream, index and byte-range read.

Write: `member(name, data)` gives a member's bytes exactly as `tarfile` writes them in PAX format
with a fixed owner, mode and mtime (any tar reader reads them; the same samples give the same
bytes); the header is assembled from constant parts, because tarfile's generic header code was most
of a shard's write time. `END` closes an archive (`end(size)` with tarfile's record padding).

Read: `Reader` walks the member headers of a stream once. It is strict, because a shard is a
contract and not an archive to salvage: every header's checksum and numeric fields are checked, a
member larger than `max_member` (default `MAX_MEMBER`, or the `MMDATA_TAR_MAX_MEMBER` environment
variable) is refused, so are links, devices, directories, FIFOs and any name with a directory part
(a shard is flat: `escape/x.txt` is not a sample), and a stream that ends before its end-of-archive
block is truncated. Every such damage raises `DamagedShard` naming the shard and the byte offset of
the header at fault; nothing is skipped, so no sample is ever made up from a damaged stream. Data
the caller does not `read()` is skipped by seeking where the file allows it (a local file), else by
reading. Compressed streams (gzip, bz2, xz) are decompressed on the fly; their offsets are those of
the uncompressed tar.

Index and byte-range read: `index(url)` lists members with their data offsets (headers only), and
`read_ranges(url, ranges)` reads many members' bytes at once: seeks in a local file, one
`cat_ranges` on an object store.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import tarfile
import zlib
from collections.abc import Iterator
from typing import BinaryIO, NamedTuple
from zlib import adler32

import fsspec

from mmdata import fsio

BLOCK = 512
RECORD = 20 * BLOCK  # tarfile pads an archive to whole records
MTIME = 0  # fixed so that identical samples give identical shard bytes
MAX_MEMBER = 1 << 30  # 1 GiB: far above any image or document, far below a runaway length field
_ZERO = bytes(BLOCK)


class ShardError(Exception):
    """A shard that cannot be read or written, with the shard named."""


class DamagedShard(ShardError):
    """A shard whose bytes break the tar format: names the shard and the byte offset."""

    def __init__(self, source: str, offset: int, what: str):
        super().__init__(f"{source}: damaged tar at byte {offset}: {what}")
        self.source, self.offset, self.what = source, offset, what


class ChangedBytes(DamagedShard):
    """A member whose bytes differ from what its writer recorded (the shard's member index)."""


def max_member() -> int:
    raw = os.environ.get("MMDATA_TAR_MAX_MEMBER", "")
    return int(raw) if raw.isdigit() else MAX_MEMBER


# ---------------------------------------------------------------------------------------------
# write


def _octal(n: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, n)


_HEAD_MODE_IDS = _octal(0o644, 8) + _octal(0, 8) + _octal(0, 8)
_HEAD_TAIL = (
    b"0"  # regular file
    + bytes(100)  # linkname
    + tarfile.POSIX_MAGIC
    + bytes(32 + 32)  # uname, gname
    + bytes(8 + 8)  # devmajor, devminor (empty for regular files, as tarfile writes them)
    + bytes(155 + 12)  # prefix, padding to 512
)
_TAIL_SUM = 8 * 32 + sum(_HEAD_TAIL)  # the checksum field counts as spaces


def header(name: str, size: int) -> bytes:
    """The header tarfile would write for this member (PAX format, fixed owner/mode/mtime)."""
    raw = name.encode("utf-8")
    if not name.isascii() or len(raw) > 100 or size >= 8**11:  # tarfile writes a PAX extended header for these
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, MTIME, 0o644, 0, 0, "", ""
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    head = raw.ljust(100, b"\0") + _HEAD_MODE_IDS + _octal(size, 12) + _octal(MTIME, 12)
    return head + b"%06o\0 " % (sum(head) + _TAIL_SUM) + _HEAD_TAIL


def padding(size: int) -> bytes:
    return bytes(-size % BLOCK)


def member(name: str, data: bytes) -> bytes:
    """One member: header, data, padding to the block."""
    return b"".join((header(name, len(data)), data, padding(len(data))))


def end(size: int) -> bytes:
    """What closes an archive of `size` bytes: two zero blocks, then zeros to a whole record."""
    return bytes(2 * BLOCK + (-(size + 2 * BLOCK) % RECORD))


# ---------------------------------------------------------------------------------------------
# read


class Member(NamedTuple):
    name: str
    offset: int  # of its data in the (uncompressed) tar
    size: int


_KINDS = {b"1": "hard link", b"2": "symbolic link", b"3": "character device", b"4": "block device",
          b"5": "directory", b"6": "FIFO", b"K": "long link name", b"S": "sparse file", b"V": "volume header",
          b"M": "multi-volume continuation", b"D": "GNU directory dump"}
_EXTENSIONS = (b"x", b"g", b"L")  # PAX extended / global header, GNU long name: about the next member
_REGULAR = (b"0", b"\0", b"7")  # regular file (old and new spelling), contiguous file
_COMPRESSED = ((b"\x1f\x8b", "gz"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"))
# decompressor errors of a damaged compressed stream
_CODEC_ERRORS = (EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)


def _number(field: bytes) -> int | None:
    """A numeric header field: octal (NUL/space padded) or GNU base-256; None when malformed."""
    if field[-1:] in b"\0 " and field[:1] not in b"\x80\xff":  # the fast path: octal, NUL/space-ended
        try:
            n = int(field.rstrip(b"\0 ") or b"0", 8)
            return n if n >= 0 else None
        except ValueError:
            pass
    if field[:1] in (b"\x80", b"\xff"):  # base-256, as GNU tar and tarfile write sizes of 8 GiB and more
        if field[0] == 0xFF:
            return None  # negative
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip(b" ")
    if not digits:
        return 0
    try:
        return int(digits, 8)
    except ValueError:
        return None


def _checksum_ok(head: bytes) -> bool:
    stored = _number(head[148:156])
    if stored is None:
        return False
    # The sum of the header's bytes, the checksum field counted as 8 spaces. Adler-32's low half is
    # 1 + the byte sum mod 65521, exact for 256 bytes (at most 65280): two C calls instead of a
    # Python-level sum of 512 bytes, which cost the sampler a third of its speed.
    unsigned = (adler32(head[:256]) & 0xFFFF) + (adler32(head[256:]) & 0xFFFF) - 2 - sum(head[148:156]) + 256
    if stored == unsigned:
        return True
    signed = unsigned - 2 * (sum(b for b in head[:148] if b > 127) + sum(b for b in head[156:] if b > 127))
    return stored == signed  # some old writers summed signed chars


def _pax(data: bytes, source: str, offset: int) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(data) and data[pos:pos + 1] != b"\0":
        space = data.find(b" ", pos)
        length = int(data[pos:space]) if space > pos and data[pos:space].isdigit() else 0
        record = data[pos:pos + length]
        if length <= 0 or pos + length > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise DamagedShard(source, offset, "malformed PAX extended header")
        key, _, value = record[space - pos + 1:-1].partition(b"=")
        try:
            out[key.decode("utf-8")] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise DamagedShard(source, offset, "PAX extended header is not UTF-8") from None
        pos += length
    return out


def _header_name(head: bytes) -> bytes:
    name = head[:100].split(b"\0", 1)[0]
    if head[257:262] == b"ustar" and head[345] != 0:
        name = head[345:500].split(b"\0", 1)[0] + b"/" + name
    return name


def check_name(name: str) -> str | None:
    """Why a member name cannot be a field of a flat shard's sample, or None when it can."""
    if "." in name and "/" not in name and name[0] != "." and "\\" not in name and "\0" not in name and name[1:2] != ":":
        return None  # the common case, in one pass of cheap tests
    if not name:
        return "empty member name"
    if "/" in name or "\\" in name:
        return f"member {name!r} has a directory part: a shard is flat"
    if name.startswith("."):
        return f"member {name!r} has no key"
    if "." not in name:
        return f"member {name!r} has no extension: not a sample field"
    if "\0" in name or (len(name) > 1 and name[1] == ":"):
        return f"member {name!r} is not a plain file name"
    return None


class Reader:
    """The members of one tar stream, validated; iterate it for `Member`s. `read()` returns the
    data of the member just yielded; data not read is skipped."""

    def __init__(self, f: BinaryIO, source: str, *, limit: int | None = None):
        self.source = source
        self.limit = max_member() if limit is None else limit
        if hasattr(f, "peek"):
            magic = f.peek(8)[:8]
        else:  # fsspec's remote files cannot peek: read the magic and put it back in front
            magic = f.read(8)
            f = _Prefixed(magic, f)
        kind = next((k for m, k in _COMPRESSED if magic.startswith(m)), None)
        self.compressed = kind is not None
        if kind == "gz":
            f = gzip.GzipFile(fileobj=f, mode="rb")
        elif kind == "bz2":
            f = bz2.BZ2File(f, "rb")
        elif kind == "xz":
            f = lzma.LZMAFile(f, "rb")  # noqa: SIM115
        self.f = f
        # skip data by seeking only where that is cheap and the size is known (a local file)
        self.total = None
        if not self.compressed and isinstance(f, io.BufferedReader | io.FileIO):
            self.total = os.fstat(f.fileno()).st_size - f.tell()
        self.pos = 0  # offset of what self.f reads next, in the uncompressed tar
        self._left = 0  # data bytes (padded) of the current member not consumed yet
        self._size = 0

    def _fail(self, offset: int, what: str):
        raise DamagedShard(self.source, offset, what)

    def _read(self, n: int, at: int, what: str) -> bytes:
        try:
            data = self.f.read(n)
        except _CODEC_ERRORS as e:
            self._fail(self.pos, f"compressed stream damaged: {e}")
        except OSError as e:
            if self.compressed:
                self._fail(self.pos, f"compressed stream damaged: {e}")
            raise
        if len(data) != n:
            self._fail(at, f"truncated: {what} needs {n} bytes, the stream has {len(data)}")
        self.pos += n
        return data

    def _skip(self) -> None:
        n, self._left = self._left, 0
        if not n:
            return
        if self.total is not None:
            self.f.seek(n, 1)
            self.pos += n
        else:
            while n:
                step = min(n, 1 << 20)
                self._read(step, self.pos, "member data")
                n -= step

    def read(self) -> bytes:
        """The data of the member just yielded (once)."""
        n, size = self._left, self._size
        if not n:
            return b""
        self._left = 0
        try:
            data = self.f.read(n)
        except _CODEC_ERRORS as e:
            self._fail(self.pos, f"compressed stream damaged: {e}")
        if len(data) != n:
            self._fail(self.pos, f"truncated: member data needs {n} bytes, the stream has {len(data)}")
        self.pos += n
        return data if n == size else data[:size]

    def __iter__(self) -> Iterator[Member]:
        pax: dict[str, str] = {}
        long_name: bytes | None = None
        read, fail, total, limit = self.f.read, self._fail, self.total, self.limit
        while True:
            if self._left:
                if total is not None:  # a local file: seek over the data nobody read
                    self.f.seek(self._left, 1)
                    self.pos += self._left
                    self._left = 0
                else:
                    self._skip()
            at = self.pos
            try:
                head = read(BLOCK)
            except _CODEC_ERRORS as e:
                fail(at, f"compressed stream damaged: {e}")
            if len(head) < BLOCK:
                fail(at, "truncated: " + (f"header cut after {len(head)} bytes" if head else "ends without its end-of-archive block"))
            self.pos = at + BLOCK
            if head == _ZERO:
                return  # end of archive (tarfile writes a second zero block and record padding: not needed)
            # the fast path: fields as tarfile and GNU tar write them (octal, NUL-ended; checksum as
            # six digits, NUL, space); anything else goes through the general parsers below
            try:
                ok = head[154:156] == b"\0 " and int(head[148:154], 8) == (
                    (adler32(head[:256]) & 0xFFFF) + (adler32(head[256:]) & 0xFFFF) + 254 - sum(head[148:156]))
                size = int(head[124:135], 8) if head[135] == 0 else -1
            except ValueError:
                ok, size = False, -1
            if not ok and not _checksum_ok(head):
                fail(at, "header checksum mismatch (not a tar, or damaged)")
            if size < 0 and (size := _number(head[124:136])) is None:
                fail(at, "malformed size field")
            kind = head[156:157]
            if pax and "size" in pax and kind not in _EXTENSIONS:
                if not pax["size"].isdigit():
                    fail(at, "malformed PAX size")
                size = int(pax["size"])
            if size > limit:
                fail(at, f"member of {size} bytes is larger than the limit of {limit} (MMDATA_TAR_MAX_MEMBER)")
            padded = size + (-size % BLOCK)
            if total is not None and at + BLOCK + padded > total:
                fail(at, f"truncated: a member of {size} bytes, {max(0, total - at - BLOCK)} left in the file")
            self._left, self._size = padded, size
            if kind in _EXTENSIONS:
                data = self.read()
                if kind == b"x":
                    pax = _pax(data, self.source, at)
                elif kind == b"L":
                    long_name = data.split(b"\0", 1)[0]
                continue  # a global PAX header (g) sets defaults no shard writer uses
            raw = head[:100].split(b"\0", 1)[0] if head[345] == 0 else _header_name(head)
            try:
                name = pax["path"] if pax and "path" in pax else (raw if long_name is None else long_name).decode()
            except UnicodeDecodeError:
                fail(at, f"member name {raw!r} is not UTF-8")
            if pax or long_name is not None:
                pax, long_name = {}, None
            if kind not in _REGULAR:
                fail(at, f"{_KINDS.get(kind, f'type {kind!r}')} member {name!r}: a shard holds regular files only")
            if why := check_name(name):
                fail(at, why)
            yield Member(name, at + BLOCK, size)


class _Prefixed:
    """A read-only stream: `head`, then the rest of `f`."""

    def __init__(self, head: bytes, f):
        self.head, self.f = head, f

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.f.read(n)
        if n < 0:
            out, self.head = self.head + self.f.read(), b""
            return out
        out, self.head = self.head[:n], self.head[n:]
        return out + self.f.read(n - len(out)) if len(out) < n else out


def open_url(url: str) -> BinaryIO:
    """A binary file for `url` (local, s3://, http://, ...): a plain buffered file when local."""
    if fsio.is_local(url):
        return open(fsio.fs_path(url)[1], "rb")
    return fsspec.open(url, "rb").open()


def index(url: str, *, limit: int | None = None) -> list[Member]:
    """Every member of an uncompressed tar, with its data offset; reads the headers only."""
    with open_url(url) as f:
        reader = Reader(f, url, limit=limit)
        if reader.compressed:
            raise ShardError(f"{url}: a compressed tar has no byte offsets to index; write shards uncompressed")
        return list(reader)


def read_ranges(url: str, ranges: list[tuple[int, int]]) -> list[bytes]:
    """The bytes of each (offset, size) range of `url`; a short read is a truncated shard."""
    if fsio.is_local(url):
        out = []
        with open(fsio.fs_path(url)[1], "rb") as f:
            for start, size in ranges:
                f.seek(start)
                out.append(f.read(size))
    else:
        fs, path = fsio.fs_path(url)
        out = fs.cat_ranges([path] * len(ranges), [s for s, _ in ranges], [s + n for s, n in ranges])
    for (start, size), blob in zip(ranges, out):
        if len(blob) != size:
            raise DamagedShard(url, start, f"truncated: {size} bytes expected, {len(blob)} there")
    return out
