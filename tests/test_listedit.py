# SPDX-License-Identifier: ISC
"""Tests for qtools-list: edits of the allow and deny lists, their cdb, the lock, bad input."""

import fcntl
import os
import subprocess
import time

from conftest import VENV_BIN, base_env, run_prog


def qlist(directory, *args, stdin=b""):
    return run_prog(["qtools-list", "-d", str(directory)] + list(args), stdin=stdin)


def query(cdb, key):
    return run_prog(["qtools-mkcdb", "-n", "-q", key, str(cdb)])


def test_add_show_del_with_the_cdb_rebuilt_each_time(tmp_path):
    lists = tmp_path / "lists"
    result = qlist(lists, "allow", "add", "192.0.2.0/24", "partner", "office")
    assert (result.rc, result.err) == (0, b"qtools-list: info: %s/allow.cdb rebuilt: 1 entries\n"
                                       % str(lists).encode())
    assert (lists / "allow").read_bytes() == b"192.0.2.0/24 partner office\n"
    assert query(lists / "allow.cdb", "192.0.2.77").out == b"192.0.2.0/24 partner office\n"
    assert qlist(lists, "allow", "add", "mx.example.com").rc == 0
    assert qlist(lists, "allow", "show").out == b"192.0.2.0/24 partner office\nmx.example.com\n"
    assert qlist(lists, "allow", "show", "192.0.2.9").out == b"192.0.2.0/24 partner office\n"
    assert qlist(lists, "allow", "show", "198.51.100.1").rc == 100
    # adding what is there replaces its line
    assert qlist(lists, "allow", "add", "192.0.2.0/24", "new").rc == 0
    assert (lists / "allow").read_bytes() == b"192.0.2.0/24 new\nmx.example.com\n"
    assert qlist(lists, "allow", "del", "192.0.2.0/24").rc == 0
    assert query(lists / "allow.cdb", "192.0.2.77").rc == 100
    assert qlist(lists, "deny", "add", "2001:db8::/32", "spammer").rc == 0
    assert query(lists / "deny.cdb", "2001:db8::1").out == b"2001:db8::/32 spammer\n"
    # the cdb carries the text's time: qtools-mkcdb -s finds nothing to rebuild
    assert os.stat(lists / "deny").st_mtime_ns == os.stat(lists / "deny.cdb").st_mtime_ns
    assert run_prog(["qtools-mkcdb", "-s", "-v", "-n", str(lists)]).err == b""


def test_comments_are_kept(tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "deny").write_bytes(b"# spammers\n10.0.0.0/8 old\n")
    assert qlist(lists, "deny", "add", "192.0.2.7").rc == 0
    assert qlist(lists, "deny", "del", "10.0.0.0/8").rc == 0
    assert (lists / "deny").read_bytes() == b"# spammers\n192.0.2.7\n"


def test_bad_input_names_file_and_line_and_keeps_the_old_cdb(tmp_path):
    lists = tmp_path / "lists"
    assert qlist(lists, "deny", "add", "192.0.2.7").rc == 0
    before = (lists / "deny.cdb").read_bytes()
    result = qlist(lists, "deny", "add", "192.0.2.1/24")
    assert (result.rc, result.err) == (
        100, b"qtools-list: fatal: 192.0.2.1/24 has bits set beyond /24: the network is 192.0.2.0/24\n")
    with open(lists / "deny", "ab") as f:
        f.write(b"1.2.3.400 typo\n")
    result = qlist(lists, "deny", "add", "198.51.100.0/24")
    assert result.rc == 100
    assert result.err == (b"qtools-list: fatal: unable to parse %s/deny line 2: invalid address,"
                          b" network or host name 1.2.3.400: 1.2.3.400 typo\n" % str(lists).encode())
    assert (lists / "deny.cdb").read_bytes() == before
    assert b"198.51.100" not in (lists / "deny").read_bytes()
    assert not [n for n in os.listdir(lists) if n.endswith(".tmp")]
    result = qlist(lists, "deny", "add", "192.0.2.8", "two\n0.0.0.0/0 lines")
    assert (result.rc, result.err) == (
        100, b"qtools-list: fatal: the text holds a control character: two?0.0.0.0/0 lines\n")
    result = qlist(lists, "deny", "del", "203.0.113.1")
    assert (result.rc, result.err) == (100, b"qtools-list: fatal: 203.0.113.1 is not in the list\n")


def test_usage(tmp_path):
    for args in ([], ["allow"], ["grey", "show"], ["allow", "add"], ["allow", "del"],
                 ["allow", "show", "a", "b"], ["allow", "list"]):
        result = qlist(tmp_path, *args)
        assert result.rc == 100 and b"qtools-list: usage: qtools-list [ -d dir ]" in result.err


def test_two_admins_never_lose_an_edit(tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    holder = os.open(lists / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    edits = [subprocess.Popen([os.path.join(VENV_BIN, "qtools-list"), "-d", str(lists), "deny",
                               "add", "192.0.2.%d" % n], env=base_env(),
                              stderr=subprocess.DEVNULL) for n in range(1, 9)]
    time.sleep(0.3)
    assert all(edit.poll() is None for edit in edits)  # they wait for the lock
    os.close(holder)
    assert [edit.wait(30) for edit in edits] == [0] * 8
    assert len((lists / "deny").read_bytes().splitlines()) == 8
    for n in range(1, 9):
        assert query(lists / "deny.cdb", "192.0.2.%d" % n).rc == 0
