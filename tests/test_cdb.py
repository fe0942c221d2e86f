# SPDX-License-Identifier: ISC
"""Tests for `qtools.cdb`: the writers against cdbmake, the atomic write, the reader."""

import fcntl
import hashlib
import io
import os
import random
import shutil
import subprocess
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qtools import cdb

# Two keys whose djb hash is 0 (found by a meet-in-the-middle search): cdb_make
# tells an empty slot by its zero position, pure-cdb by its zero hash.
HASH_ZERO = [b"cphvahfg", b"qoyhaiik"]
WRITERS = ["pure", "fast"]


def cdbmake(records, directory):
    """Return the bytes djb's cdbmake (freecdb) writes for records."""
    if shutil.which("cdbmake") is None:
        pytest.fail("cdbmake is not installed: run make test, which installs freecdb")
    text = b"".join(b"+%d,%d:%s->%s\n" % (len(k), len(v), k, v) for k, v in records) + b"\n"
    target = os.path.join(str(directory), "ref.cdb")
    subprocess.run(["cdbmake", target, target + ".tmp"], input=text, check=True)
    with open(target, "rb") as f:
        return f.read()


def written(records, writer="pure"):
    """Return the bytes Writer (pure) or the cdbx writer gives for records."""
    if writer == "pure":
        out = io.BytesIO()
        w = cdb.Writer(out)
        for key, value in records:
            w.add(key, value)
        w.finish()
        return out.getvalue()
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "x.cdb")
        cdb.write(path, records, writer="fast")
        with open(path, "rb") as f:
            return f.read()


def colliding_with_zero():
    """Return a key that lands in table 0, slot 0 of a 2-record table, like HASH_ZERO[0]."""
    n = 0
    while True:
        key = b"k%d" % n
        h = cdb.cdb_hash(key)
        if h & 255 == 0 and (h >> 8) % 4 == 0:
            return key
        n += 1


CASES = {
    "empty": [],
    "one": [(b"1.2.3.4", b"D\0")],
    "empty key and value": [(b"", b"")],
    "duplicates keep their order": [(b"k", b"1"), (b"j", b""), (b"k", b"2"), (b"k", b"3")],
    "hash zero first": [(HASH_ZERO[0], b"zero"), (colliding_with_zero(), b"x")],
    "hash zero second": [(colliding_with_zero(), b"x"), (HASH_ZERO[0], b"zero")],
    "two hash zero keys": [(HASH_ZERO[0], b"a"), (HASH_ZERO[1], b"b")],
    "binary": [(bytes([n, 0, 255 - n]), bytes(range(n))) for n in range(200)],
    "many": [(b"user%d@example.com" % (n % 700), b"-" * (n % 3)) for n in range(3000)],
}


class TestWriter:
    """The writers give cdbmake's bytes."""

    @pytest.mark.parametrize("writer", WRITERS)
    @pytest.mark.parametrize("name", sorted(CASES))
    def test_same_bytes_as_cdbmake(self, tmp_path, name, writer):
        """Every case is byte for byte what cdbmake writes."""
        records = CASES[name]
        assert written(records, writer) == cdbmake(records, tmp_path)

    def test_hash_zero_keys_are_found(self, tmp_path):
        """A key hashing to 0 stays findable next to a colliding one."""
        assert all(cdb.cdb_hash(k) == 0 for k in HASH_ZERO)
        path = str(tmp_path / "z.cdb")
        cdb.write(path, CASES["hash zero first"], writer="pure")
        with cdb.Reader(path) as reader:
            assert reader.get(HASH_ZERO[0]) == b"zero"

    @pytest.mark.parametrize(
        "text, digest",
        [
            (b"1.2.3.4:deny\n", "d5a60ae0956f0497b3318c3e718b95fdc40acf58d6dc5e995ebfbed0384a876c"),
            (
                b'127.0.0.1:allow,RELAYCLIENT=""\n=.example.com:deny\n:allow,RBLSMTPD="-no rDNS"\n',
                "af2ea9fcde4897d195f10530356672ab580de8e84d3072c4f251365736588065",
            ),
        ],
    )
    @pytest.mark.parametrize("writer", WRITERS)
    def test_golden_tcprules_files(self, text, digest, writer):
        """The tcprules records give the files Debian's tcprules wrote."""
        from qtools import rules

        records = list(rules.tcprules(text.split(b"\n"), None))
        assert hashlib.sha256(written(records, writer)).hexdigest() == digest

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.tuples(st.binary(max_size=12), st.binary(max_size=12)), max_size=60))
    def test_pure_and_fast_agree(self, records):
        """Any records give the same file from both writers."""
        assert written(records, "pure") == written(records, "fast")

    def test_four_gib_refused(self):
        """A record that would take the file to 4 GiB is refused with EFBIG, as cdbmake does."""
        import errno

        writer = cdb.Writer(io.BytesIO())
        writer._pos = 0xFFFFFFFF - 9  # as if 4 GiB less 9 bytes were written
        with pytest.raises(OSError) as raised:
            writer.add(b"k", b"v")
        assert raised.value.errno == errno.EFBIG

    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.tuples(st.binary(max_size=8), st.binary(max_size=8)), max_size=40))
    def test_reader_reads_what_was_written(self, records):
        """Reader.items gives the records back in order, get_all every value of a key."""
        import tempfile

        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "r.cdb")
            cdb.write(path, records, writer="pure")
            with cdb.Reader(path) as reader:
                assert [(bytes(k), bytes(v)) for k, v in reader.items()] == records
                for key, _ in records:
                    assert [bytes(v) for v in reader.get_all(key)] == [
                        v for k, v in records if k == key
                    ]


class TestWrite:
    """The atomic write: tmp, fsync, rename; failures leave the old cdb."""

    @pytest.mark.parametrize("writer", WRITERS)
    def test_replaces_and_removes_nothing_else(self, tmp_path, writer):
        """A write replaces the cdb and leaves no tmp behind."""
        path = str(tmp_path / "a.cdb")
        assert cdb.write(path, [(b"k", b"1")], writer=writer) == 1
        assert cdb.write(path, [(b"k", b"2"), (b"l", b"")], writer=writer) == 2
        assert sorted(os.listdir(str(tmp_path))) == ["a.cdb"]
        with cdb.Reader(path) as reader:
            assert reader.get(b"k") == b"2"

    @pytest.mark.parametrize("writer", WRITERS)
    def test_failing_records_keep_the_old_cdb(self, tmp_path, writer):
        """An exception from the records removes tmp and keeps the old file."""
        path = str(tmp_path / "a.cdb")
        cdb.write(path, [(b"k", b"old")])
        before = (tmp_path / "a.cdb").read_bytes()

        def records():
            yield b"k", b"new"
            raise ValueError("bad line")

        with pytest.raises(ValueError):
            cdb.write(path, records(), tmp=str(tmp_path / "a.tmp"), writer=writer)
        assert (tmp_path / "a.cdb").read_bytes() == before
        assert sorted(os.listdir(str(tmp_path))) == ["a.cdb"]

    def test_uncreatable_tmp(self, tmp_path):
        """A tmp that cannot be created is a WriteError naming it."""
        tmp = str(tmp_path / "missing" / "a.tmp")
        with pytest.raises(cdb.WriteError, match="unable to create .*/missing/a.tmp: no such file"):
            cdb.write(str(tmp_path / "a.cdb"), [], tmp=tmp)

    def test_unmovable_tmp(self, tmp_path):
        """A rename that fails is a WriteError, and tmp is removed."""
        (tmp_path / "a.cdb").mkdir()
        with pytest.raises(cdb.WriteError, match="unable to move .*a.tmp to .*a.cdb: is a directory"):
            cdb.write(str(tmp_path / "a.cdb"), [], tmp=str(tmp_path / "a.tmp"))
        assert not (tmp_path / "a.tmp").exists()

    def test_stamps_mtime(self, tmp_path):
        """mtime_ns is the new file's modification time."""
        path = str(tmp_path / "a.cdb")
        cdb.write(path, [], mtime_ns=1_234_567_890_123_456_789)
        assert os.stat(path).st_mtime_ns == 1_234_567_890_123_456_789

    def test_waits_for_another_build(self, tmp_path):
        """A build waits while another holds tmp, then writes its own file."""
        path, tmp = str(tmp_path / "a.cdb"), str(tmp_path / "a.tmp")
        holder = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(holder, fcntl.LOCK_EX)
        done = threading.Event()
        worker = threading.Thread(
            target=lambda: (cdb.write(path, [(b"k", b"v")], tmp=tmp), done.set())
        )
        worker.start()
        try:
            time.sleep(0.5)
            assert not done.is_set() and not os.path.exists(path)
            # the holder finishes the way write() does: rename, then unlock
            os.rename(tmp, str(tmp_path / "other.cdb"))
        finally:
            os.close(holder)
        worker.join(20)
        assert done.is_set()
        with cdb.Reader(path) as reader:
            assert reader.get(b"k") == b"v"
        assert (tmp_path / "other.cdb").read_bytes() == b""


class TestReader:
    """The reader refuses what is not a cdb."""

    def test_short_file(self, tmp_path):
        """A file shorter than the header is an OSError."""
        (tmp_path / "x").write_bytes(b"x" * 100)
        with pytest.raises(OSError, match="not a cdb"):
            cdb.Reader(str(tmp_path / "x"))

    @pytest.mark.parametrize("header, records", [
        ((0xFFFFFFF0).to_bytes(4, "little"), b""),  # records "end" 4 GB on
        ((2048 + 12).to_bytes(4, "little"), (0xFFFFFFFF).to_bytes(4, "little") + bytes(8)),
        ((2048 + 12).to_bytes(4, "little"), bytes(4) + (0xFFFFFFFF).to_bytes(4, "little") + bytes(4)),
        ((2048 + 12).to_bytes(4, "little"), bytes(12)),  # a header split by the end
    ])
    def test_lying_lengths(self, tmp_path, header, records):
        """Lengths past the end of the file are an OSError, before anything is read by them."""
        path = tmp_path / "x.cdb"
        path.write_bytes(header + bytes(2044) + records + bytes(16))
        with cdb.Reader(str(path)) as reader:
            with pytest.raises(OSError, match="not a cdb file"):
                for n, _ in enumerate(reader.items()):  # never more records than bytes
                    assert n < len(records) // 8 + 1

    def test_missing_key(self, tmp_path):
        """get gives the default, get_all nothing, for a key that is absent."""
        path = str(tmp_path / "a.cdb")
        cdb.write(path, [(b"k%d" % n, b"") for n in range(50)])
        with cdb.Reader(path) as reader:
            assert reader.get(b"nope", 7) == 7 and list(reader.get_all(b"nope")) == []
            assert b"k7" in reader and b"k77" not in reader


def test_random_large_set_matches_cdbmake(tmp_path):
    """Twenty thousand random records: both writers give cdbmake's file."""
    rnd = random.Random(6)
    records = [
        (rnd.randbytes(rnd.randrange(0, 30)), rnd.randbytes(rnd.randrange(0, 10)))
        for _ in range(20000)
    ]
    reference = cdbmake(records, tmp_path)
    assert written(records, "pure") == reference
    assert written(records, "fast") == reference


def test_open_or_warn(tmp_path, capfd):
    """An unreadable cdb gives None and one warning line; a good one opens."""
    from qtools import cdb as cdbmodule

    assert cdbmodule.open_or_warn(str(tmp_path / "missing.cdb"), "demo") is None
    assert capfd.readouterr().err == "demo: warning: unable to open %s: no such file or directory\n" % (tmp_path / "missing.cdb")
    path = tmp_path / "good.cdb"
    cdbmodule.write(str(path), [(b"k", b"v")])
    assert cdbmodule.open_or_warn(str(path), "demo").get(b"k") == b"v"


def test_a_dropped_reader_gives_its_descriptor_back(tmp_path):
    """A reader a filter drops unclosed (a session run in-process) closes its file."""
    path = tmp_path / "x.cdb"
    path.write_bytes(written([(b"k", b"v")]))
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        assert cdb.Reader(str(path)).get(b"k") == b"v"
    assert len(os.listdir("/proc/self/fd")) == before
