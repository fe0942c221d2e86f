# SPDX-License-Identifier: ISC
"""Tests for `qtools.store` and `qtools.dirstore`: the greylist timers and the directory store."""

import multiprocessing
import os
import time

import pytest

from qtools import store
from qtools.store import DirStore, State, StoreError, Timers

DELAY, WINDOW, LIFE = 300, 86400, 36 * 86400
# A moment well inside a window generation and a lifetime generation, so a
# test that does not mean to cross a generation boundary does not.
T0 = 1795305600 + 3 * 3600


def make(tmp_path, **timers):
    root = tmp_path / "grey"
    root.mkdir(exist_ok=True)
    return DirStore(str(root), Timers(**timers) if timers else Timers())


def replay(s, key, steps):
    """Run check at each offset from T0; return the statuses."""
    return [s.check(key, T0 + offset).status for offset in steps]


@pytest.fixture
def greystore(tmp_path):
    """Factory: greystore(**timers) -> an empty DirStore.

    TestTimers is written against the Store interface only: the tests of
    another store subclass it and override this fixture.
    """
    return lambda **timers: make(tmp_path, **timers)


class TestTimers:
    """Tests for the three timers as a store's check applies them."""

    @pytest.mark.parametrize(
        "steps, expected",
        [
            ([0], ["new"]),
            ([0, DELAY - 1], ["new", "wait"]),
            ([0, DELAY], ["new", "pass"]),
            ([0, DELAY + 1, DELAY + 2], ["new", "pass", "known"]),
            ([0, 100, 200, DELAY - 1, DELAY], ["new", "wait", "wait", "wait", "pass"]),
            ([0, WINDOW - 1], ["new", "pass"]),
            ([0, WINDOW], ["new", "new"]),
            ([0, WINDOW, WINDOW + DELAY - 1, WINDOW + DELAY], ["new", "new", "wait", "pass"]),
            ([0, DELAY, DELAY + LIFE - 1], ["new", "pass", "known"]),
            ([0, DELAY, DELAY + LIFE], ["new", "pass", "new"]),
            (
                [0, DELAY, DELAY + LIFE - 1, DELAY + 2 * LIFE - 2],
                ["new", "pass", "known", "known"],
            ),
            ([0, DELAY, DELAY + LIFE - 1, DELAY + 2 * LIFE - 1], ["new", "pass", "known", "new"]),
        ],
    )
    def test_sequence(self, greystore, steps, expected):
        """Each timer edge gives the status the timer rules promise."""
        assert replay(greystore(), "192.0.2.0/24", steps) == expected

    def test_early_retry_keeps_clock(self, greystore):
        """A retry before the delay reports the time left from the first sight."""
        s = greystore()
        s.check("k", T0)
        assert s.check("k", T0 + 120) == State("wait", T0, left=DELAY - 120)
        assert s.check("k", T0 + 200) == State("wait", T0, left=DELAY - 200)

    def test_first_sight_after_ours(self, greystore):
        """A first sight a moment after our clock never makes the wait longer than the delay."""
        s = greystore()
        s.check("k", T0 + 2)
        assert s.check("k", T0) == State("wait", T0 + 2, left=DELAY)

    def test_new_reports_delay(self, greystore):
        """A new key waits the whole delay."""
        assert greystore().check("k", T0) == State("new", T0, left=DELAY)

    def test_pass_reports_first_and_last(self, greystore):
        """The first pass reports when the key was first seen and passed."""
        s = greystore()
        s.check("k", T0)
        assert s.check("k", T0 + 400) == State("pass", T0, last=T0 + 400)

    def test_zero_delay_passes_second_connection(self, greystore):
        """With no delay the very next connection passes."""
        s = greystore(delay=0)
        assert replay(s, "k", [0, 0]) == ["new", "pass"]

    def test_keys_are_independent(self, greystore):
        """A pass for one key does nothing for another."""
        s = greystore()
        replay(s, "a", [0, DELAY])
        assert s.check("b", T0 + DELAY).status == "new"


class TestPasses:
    """Tests for the pass count (greylist -c), written against the Store interface only."""

    def test_counted_once_an_hour_up_to_most(self, greystore):
        """Each pass counts, one an hour at most, until most are counted."""
        s = greystore()
        assert s.check("k", T0, 3) == State("new", T0, left=DELAY)
        assert s.check("k", T0 + DELAY, 3) == State("pass", T0, last=T0 + DELAY, passes=1)
        got = [s.check("k", T0 + DELAY + offset, 3).passes
               for offset in (60, 3599, 3600, 3601, 7200, 10800, 86400)]
        assert got == [1, 1, 2, 2, 3, 3, 3]
        assert s.peek("k", T0 + DELAY + 86400) == State("known", last=T0 + DELAY + 86400, passes=3)

    def test_without_most_nothing_is_counted(self, greystore):
        """Without most the count is neither read nor moved; peek still tells it."""
        s = greystore()
        replay(s, "k", [0, DELAY])
        assert s.check("k", T0 + DELAY + 3600, 2).passes == 1
        assert [s.check("k", T0 + DELAY + 3600 * n).passes for n in (2, 3)] == [0, 0]
        assert s.peek("k", T0 + DELAY + 4 * 3600).passes == 1
        assert s.peek("other", T0).passes == 0

    def test_passed_counts(self, greystore):
        """passed counts like check; a key that has not passed is None and stays so."""
        s = greystore()
        s.allow("k", T0)
        assert s.passed("k", T0 + 1, 2) == State("known", last=T0 + 1, passes=1)
        assert s.passed("k", T0 + 3601, 2).passes == 2
        assert s.passed("k", T0 + 3602) == State("known", last=T0 + 3602)
        assert s.passed("other", T0, 2) is None
        assert s.peek("other", T0).status == "new"

    @pytest.mark.parametrize("how", ["deny", "forget", "expire"])
    def test_a_new_life_starts_from_none(self, greystore, how):
        """A key greylisted anew (deny, forget, a lifetime without a pass) counts from none."""
        s = greystore()
        replay(s, "k", [0, DELAY])
        s.check("k", T0 + 2 * 3600, 5)
        assert s.check("k", T0 + 3 * 3600, 5).passes == 2
        now = T0 + 3 * 3600 + (LIFE if how == "expire" else 1)
        if how != "expire":
            getattr(s, how)("k", now)
        assert s.check("k", now, 5).status in ("new", "wait")
        assert s.check("k", now + DELAY, 5) == State(
            "pass", now if how != "deny" else now, last=now + DELAY, passes=1)
        assert s.peek("k", now + DELAY + 1).passes == 1

    def test_count_lives_as_long_as_the_pass(self, greystore):
        """A full count is kept while the key keeps passing, across lifetime generations."""
        s = greystore()
        replay(s, "k", [0, DELAY])
        s.check("k", T0 + 2 * 3600, 2)
        for day in range(20, 120, 20):
            assert s.check("k", T0 + day * 86400, 2).passes == 2, day


class TestGenerations:
    """Tests for keys that cross a generation boundary."""

    def test_unproven_key_found_in_previous_window(self, tmp_path):
        """A key first seen just before a window boundary still passes after it."""
        s = make(tmp_path)
        boundary = (T0 // WINDOW + 1) * WINDOW
        assert s.check("k", boundary - 10).status == "new"
        assert s.check("k", boundary + DELAY).status == "pass"

    def test_passed_key_moves_to_current_lifetime(self, tmp_path):
        """A pass from the previous lifetime generation is renamed into the current one."""
        s = make(tmp_path)
        boundary = (T0 // LIFE + 1) * LIFE
        s.check("k", boundary - 1000)
        s.check("k", boundary - 500)
        assert s.check("k", boundary + 100).status == "known"
        tree = os.path.join(s.root, "pass")
        assert sorted(os.listdir(tree)) == [str(boundary + LIFE), str(boundary + 2 * LIFE)]
        old = os.path.join(tree, str(boundary + LIFE))
        assert [n for _, _, names in os.walk(old) for n in names] == []
        assert s.check("k", boundary + LIFE + 50).status == "known"

    def test_count_follows_its_pass_and_is_purged(self, tmp_path):
        """The count is one file per pass in count/END/XX/NAME/, moved along with its pass, purged whole."""
        s = make(tmp_path)
        boundary = (T0 // LIFE + 1) * LIFE
        s.check("192.0.2.0/24", boundary - 5000)
        s.check("192.0.2.0/24", boundary - 4000, 3)
        name = "192.0.2.0%2F24"
        entry = os.path.join(s._path("count", boundary - 4000, 0, name))
        assert os.listdir(entry) == ["1"] and os.stat(os.path.join(entry, "1")).st_mtime == boundary - 4000
        assert s.check("192.0.2.0/24", boundary + 100, 3).passes == 2
        assert not os.path.exists(entry)
        moved = s._path("count", boundary + 100, 0, name)
        assert sorted(os.listdir(moved)) == ["1", "2"]
        assert s.purge(boundary + 2 * LIFE) == 4  # the grey and pass entries, the two counted
        assert os.listdir(os.path.join(s.root, "count")) == []

    def test_current_generation_entries_are_alive(self, tmp_path):
        """Nothing in a generation directory is alive at the time it is named after."""
        s = make(tmp_path)
        s.check("k", T0)
        s.check("k", T0 + DELAY)
        for tree in ("grey", "pass"):
            for end in os.listdir(os.path.join(s.root, tree)):
                assert int(end) > T0 + DELAY
                assert s.check("other", int(end)).status == "new"
        assert s.peek("k", T0 + DELAY + LIFE).status == "new"


class TestCommands:
    """Tests for peek, allow, deny, forget and items."""

    def test_peek_changes_nothing(self, tmp_path):
        """peek of an unknown key reports new and writes no file."""
        s = make(tmp_path)
        assert s.peek("k", T0).status == "new"
        assert list(os.walk(s.root)) == [(s.root, [], [])]

    def test_peek_does_not_promote(self, tmp_path):
        """peek after the delay says pass but leaves the key unproven."""
        s = make(tmp_path)
        s.check("k", T0)
        assert s.peek("k", T0 + DELAY).status == "pass"
        assert s.peek("k", T0 + WINDOW).status == "new"

    def test_allow(self, tmp_path):
        """An allowed key passes at once and for a lifetime."""
        s = make(tmp_path)
        s.allow("k", T0)
        assert s.check("k", T0 + 1) == State("known", last=T0 + 1)
        assert s.check("k", T0 + 1 + LIFE).status == "new"

    def test_deny_takes_pass_away(self, tmp_path):
        """A denied key is greylisted anew from the moment of the deny."""
        s = make(tmp_path)
        replay(s, "k", [0, DELAY])
        s.deny("k", T0 + 1000)
        assert s.check("k", T0 + 1000 + DELAY - 1).status == "wait"
        assert s.check("k", T0 + 1000 + DELAY).status == "pass"

    def test_forget(self, tmp_path):
        """A forgotten key starts anew."""
        s = make(tmp_path)
        replay(s, "k", [0, DELAY])
        s.forget("k", T0 + DELAY)
        assert s.check("k", T0 + DELAY + 1).status == "new"

    def test_items(self, tmp_path):
        """items lists each live key once, with its state."""
        s = make(tmp_path)
        replay(s, "192.0.2.0/24", [0, DELAY])
        s.check("2001:db8::/64", T0 + 10)
        s.check("gone", T0 - WINDOW)
        found = dict(s.items(T0 + DELAY))
        assert sorted(found) == ["192.0.2.0/24", "2001:db8::/64"]
        assert found["192.0.2.0/24"].status == "known"
        assert found["2001:db8::/64"] == State("wait", T0 + 10, left=10)

    def test_long_key_is_hashed_and_listed(self, tmp_path):
        """A key too long for a file name is stored under a hash and listed by its text."""
        s = make(tmp_path)
        key = "192.0.2.0/24 " + "x" * 300 + "@example.com rcpt@example.org"
        assert s.check(key, T0).status == "new"
        names = [n for _, _, ns in os.walk(s.root) for n in ns]
        assert len(names) == 1 and names[0].startswith("=") and len(names[0]) < 100
        assert [k for k, _ in s.items(T0 + 1)] == [key]
        s.deny(key, T0 + 5)
        assert [k for k, _ in s.items(T0 + 6)] == [key]

    def test_describe(self):
        """describe gives one readable line per key."""
        line = store.describe("k", State("wait", T0, left=10.2))
        assert line == "k wait first=2026-11-22T03:00:00Z left=11"


class TestNames:
    """Tests for `file_name` and `key_of`."""

    @pytest.mark.parametrize(
        "key, name",
        [
            ("192.0.2.0/24", "192.0.2.0%2F24"),
            ("2001:db8::/64", "2001:db8::%2F64"),
            ("a b%c", "a%20b%25c"),
            (".hidden", "%2Ehidden"),
            ("..", "%2E."),
            ("=x", "%3Dx"),
            ("\u00e9", "%C3%A9"),
        ],
    )
    def test_round_trip(self, key, name):
        """Readable names keep safe characters and give the key back."""
        assert store.file_name(key) == name
        assert store.key_of(name) == key

    def test_dot_key_is_listed(self, tmp_path):
        """A key starting with a dot is not mistaken for a temporary file."""
        s = make(tmp_path)
        s.check(".tmp.1", T0)
        assert [k for k, _ in s.items(T0)] == [".tmp.1"]


class TestPurge:
    """Tests for `DirStore.purge`."""

    def test_removes_dead_generations_only(self, tmp_path):
        """purge removes what is dead and keeps what is alive."""
        s = make(tmp_path)
        for n in range(50):
            s.check("old%d" % n, T0)
        replay(s, "passed", [0, DELAY])
        later = T0 + 2 * WINDOW
        s.check("young", later)
        assert s.purge(later) == 50 + 1
        assert s.check("young", later + DELAY).status == "pass"
        assert s.check("passed", later).status == "known"
        assert s.check("old1", later).status == "new"

    def test_never_stats_an_entry(self, tmp_path, monkeypatch):
        """purge decides by directory names alone."""
        s = make(tmp_path)
        for n in range(20):
            s.check("k%d" % n, T0)
        calls = []
        real = os.stat
        monkeypatch.setattr(os, "stat", lambda *a, **k: calls.append(a) or real(*a, **k))
        monkeypatch.setattr(os, "lstat", lambda *a, **k: calls.append(a) or real(*a, **k))
        assert s.purge(T0 + 3 * WINDOW) == 20
        assert [a for a in calls if a[0] != s.root] == []

    def test_missing_root(self, tmp_path):
        """purge of a directory that is not there is an error, not a quiet success."""
        with pytest.raises(StoreError, match="unable to open .*/none: no such file"):
            DirStore(str(tmp_path / "none")).purge(T0)

    def test_empty_store(self, tmp_path):
        """purge of a store nothing was written to removes nothing."""
        assert make(tmp_path).purge(T0) == 0


class TestFailures:
    """Tests for a store that cannot be written."""

    def test_missing_root_is_not_created(self, tmp_path):
        """A missing root is an error to report, not a directory to create."""
        s = DirStore(str(tmp_path / "missing"))
        with pytest.raises(StoreError, match=r"unable to open .*/missing: no such file"):
            s.check("k", T0)
        assert not (tmp_path / "missing").exists()

    def test_root_is_a_file(self, tmp_path):
        """A root that is not a directory gives a StoreError."""
        (tmp_path / "file").write_text("")
        with pytest.raises(StoreError, match="not a directory"):
            DirStore(str(tmp_path / "file")).check("k", T0)

    @pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
    def test_root_gives_entries_to_owner(self, tmp_path):
        """What root writes (greylist -A from a shell) stays writable by the store's owner."""
        s = make(tmp_path)
        os.chown(s.root, 65534, 65534)
        s.allow("k", T0)
        s.check("other", T0)
        for directory, subdirs, files in os.walk(s.root):
            for name in subdirs + files:
                st = os.stat(os.path.join(directory, name))
                assert (st.st_uid, st.st_gid) == (65534, 65534), name

    def test_unknown_url(self):
        """A store URL of an unknown kind is refused."""
        with pytest.raises(StoreError, match="unknown store"):
            store.open_store("ftp://x", Timers())


def _hammer(root, keys, now, queue):
    s = DirStore(root)
    try:
        queue.put([s.check(k, now).status for k in keys])
    except Exception as error:  # reported to the parent, which fails
        queue.put(repr(error))


class TestCreation:
    """Tests for the link-based creation of entries."""

    def test_lost_link_reply(self, tmp_path, monkeypatch):
        """A link made but answered EEXIST (NFS retry) still counts as ours."""
        s = make(tmp_path)
        real = os.link

        def link(src, dst, **where):
            real(src, dst, **where)
            raise FileExistsError(17, "File exists")

        monkeypatch.setattr(os, "link", link)
        assert s.check("k", T0).status == "new"
        monkeypatch.setattr(os, "link", real)
        assert s.check("k", T0 + 1) == State("wait", T0, left=DELAY - 1)

    def test_stale_temporary_file(self, tmp_path):
        """A temporary file left linked by a crash neither blocks nor fakes a creation."""
        import _thread

        s = make(tmp_path)
        parts = s._place("grey", T0, 0, "k")
        path = s._path("grey", T0, 0, "k")
        os.makedirs(os.path.dirname(path))
        temp = os.path.join(os.path.dirname(path), ".tmp.%d.%d" % (os.getpid(), _thread.get_ident()))
        open(temp, "w").close()
        os.link(temp, path + "-elsewhere")
        assert s._create(parts, "k", T0, "k") is True
        open(temp, "w").close()
        os.link(temp, path + "-again")
        # The entry exists now: a creation racing with it must lose.
        assert s._create(parts, "k", T0 + 1, "k") is False
        assert not os.path.exists(temp)
        assert os.stat(path).st_mtime == T0


class TestConcurrency:
    """Tests for many processes checking the same keys at once."""

    def test_one_new_per_key(self, tmp_path):
        """Of many simultaneous first checks of a key exactly one creates it."""
        s = make(tmp_path)
        keys = ["10.0.%d.0/24" % n for n in range(10)]
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        workers = [
            context.Process(target=_hammer, args=(s.root, keys[n % 10 :] + keys[: n % 10], T0, queue))
            for n in range(40)
        ]
        for w in workers:
            w.start()
        results = [queue.get(timeout=60) for _ in workers]
        for w in workers:
            w.join(60)
        assert all(isinstance(r, list) for r in results), results
        statuses = [status for r in results for status in r]
        assert statuses.count("new") == 10
        assert statuses.count("wait") == 390
        assert sorted(k for k, _ in s.items(T0)) == sorted(keys)

    def test_promotion_race(self, tmp_path):
        """Many simultaneous retries after the delay all pass and leave one entry."""
        s = make(tmp_path)
        s.check("k", T0)
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        workers = [
            context.Process(target=_hammer, args=(s.root, ["k"] * 3, T0 + DELAY, queue))
            for _ in range(30)
        ]
        for w in workers:
            w.start()
        results = [queue.get(timeout=60) for _ in workers]
        for w in workers:
            w.join(60)
        statuses = [status for r in results for status in r]
        assert set(statuses) <= {"pass", "known"} and "pass" in statuses
        assert list(s.items(T0 + DELAY)) == [("k", State("known", last=T0 + DELAY))]


# --- root over a directory another user can write --------------------------------

OWNER = 65534  # the store's owner: the account the connections run as


def snapshot(top):
    """Return every name below top with its owner, mode and contents, links not followed."""
    found = {}
    for directory, subdirs, files in os.walk(top):
        for name in subdirs + files:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            data = open(path, "rb").read() if os.path.isfile(path) else None
            found[os.path.relpath(path, top)] = (st.st_uid, st.st_gid, st.st_mode, data)
    return found


@pytest.fixture
def hostile(tmp_path):
    """A store owned by OWNER next to a victim directory of root's that must survive."""
    os.chmod(str(tmp_path), 0o755)
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "file").write_text("precious")
    (victim / "sub" / "deep").write_text("precious too")
    root = tmp_path / "store"
    root.mkdir()
    os.chown(str(root), OWNER, OWNER)
    before = snapshot(str(victim))
    yield DirStore(str(root)), str(victim)
    assert snapshot(str(victim)) == before


def plant(path, target):
    """Make the directories above path and a symbolic link at path to target."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.symlink(target, path)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
class TestHostileStore:
    """Tests for root's commands over a store whose owner planted symbolic links."""

    def test_purge_does_not_follow_a_generation_link(self, hostile):
        """A dead generation that is a link to another directory: the link goes, not its target."""
        s, victim = hostile
        plant(os.path.join(s.root, "grey", "1000000000"), victim)
        plant(os.path.join(s.root, "pass", "1000000000"), victim)
        s.purge(T0)
        assert os.listdir(os.path.join(s.root, "grey")) == []

    def test_purge_does_not_follow_links_below(self, hostile):
        """Links in place of a fan directory or an entry are removed themselves."""
        s, victim = hostile
        dead = os.path.join(s.root, "grey", "1000000000")
        plant(os.path.join(dead, "ab"), victim)
        plant(os.path.join(dead, "cd", "entry"), os.path.join(victim, "file"))
        plant(os.path.join(dead, "ef", "nest"), os.path.join(victim, "sub"))
        assert s.purge(T0) == 3  # the three links
        assert not os.path.lexists(dead)

    def test_allow_and_deny_replace_planted_entries(self, hostile):
        """An entry that is a link is replaced by a new file; the target keeps its owner."""
        s, victim = hostile
        for tree in ("pass", "grey"):
            for age in (0, 1):
                plant(s._path(tree, T0, age, "k"), os.path.join(victim, "file"))
        s.allow("k", T0)
        assert s.peek("k", T0) == State("known", last=T0)
        s.deny("k", T0)
        assert s.peek("k", T0) == State("wait", T0, left=DELAY)
        entry = s._path("grey", T0, 0, "k")
        assert not os.path.islink(entry) and os.stat(entry).st_uid == OWNER

    def test_planted_temporary_name(self, hostile):
        """A link at the name of root's temporary file is removed, never written through."""
        import _thread

        s, victim = hostile
        temp = ".tmp.%d.%d" % (os.getpid(), _thread.get_ident())
        for name in ("k", "=" + "0" * 64):
            plant(os.path.join(os.path.dirname(s._path("pass", T0, 0, name)), temp),
                  os.path.join(victim, "file"))
        s.allow("k", T0)
        s.allow("x" * 300, T0)  # a hashed name: the key is written into the file
        assert sorted(k for k, _ in s.items(T0)) == ["k", "x" * 300]

    def test_directory_link_refused(self, hostile):
        """A link where a directory must be made is an error: nothing is made through it."""
        s, victim = hostile
        plant(os.path.join(s.root, "pass"), victim)
        with pytest.raises(StoreError, match="unable to create .*/store/pass: not a directory"):
            s.allow("k", T0)
        s.deny("k", T0)  # no pass to take away; the grey entry is made
        assert s.peek("k", T0) == State("wait", T0, left=DELAY)

    def test_count_link_refused(self, hostile):
        """A link planted where a count is kept is removed itself, never followed or written through."""
        s, victim = hostile
        s.allow("k", T0)
        count = s._path("count", T0, 0, "k")
        plant(count, victim)
        assert s.passed("k", T0 + 1, 3).passes == 1
        assert not os.path.islink(count) and os.listdir(count) == ["1"]
        assert os.stat(count).st_uid == OWNER
        plant(s._path("count", T0, 1, "k"), victim)  # in the previous generation
        s.deny("k", T0 + 2)
        assert not os.path.lexists(count) and not os.path.lexists(s._path("count", T0, 1, "k"))

    def test_query_does_not_read_through_links(self, hostile):
        """-q never reads a file a hashed entry's link points to."""
        s, victim = hostile
        secret = os.path.join(victim, "file")
        name = "=" + "1" * 64
        plant(s._path("pass", T0, 0, name), secret)
        fd = os.open(os.path.dirname(s._path("pass", T0, 0, name)), os.O_RDONLY)
        try:
            assert s._read_key(fd, name) == name
        finally:
            os.close(fd)

    def test_commands_from_the_shell(self, hostile):
        """--- the installed greylist -A, -D, -q and -P as root over planted links."""
        from conftest import run_prog

        s, victim = hostile
        plant(os.path.join(s.root, "grey", "1000000000"), victim)
        plant(s._path("pass", time.time(), 0, "192.0.2.0%2F24"), os.path.join(victim, "file"))
        plant(s._path("pass", time.time(), 0, "%1B%5D0%3Bevil%07"), os.path.join(victim, "file"))
        for argv in (["-A", s.root, "192.0.2.7"], ["-D", s.root, "192.0.2.7"],
                     ["-A", s.root, "198.51.100.7"], ["-P", s.root]):
            result = run_prog(["greylist"] + argv)
            assert result.rc == 0 and result.err == b"", (argv, result)
        listed = run_prog(["greylist", "-q", s.root])
        assert listed.rc == 0
        assert all(32 <= b < 127 for b in listed.out.replace(b"\n", b"")), listed.out
        assert sorted(line.split()[0] for line in listed.out.splitlines()) == [
            b"192.0.2.0/24", b"198.51.100.0/24", b"?]0;evil?"]  # a terminal escape, cleaned
        assert not os.path.lexists(os.path.join(s.root, "grey", "1000000000"))

    def test_swapped_under_a_running_command(self, hostile):
        """The store's owner swaps files and directories for links while root runs -A, -D and -P."""
        s, victim = hostile
        stop = os.path.join(os.path.dirname(s.root), "stop")
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the store's owner, attacking
            try:
                os.chdir(s.root)
                os.setgid(OWNER)
                os.setuid(OWNER)
                _swap_loop(victim, os.path.join("..", "stop"))
            finally:
                os._exit(0)
        try:
            deadline = time.monotonic() + 4
            n = 0
            while time.monotonic() < deadline:
                n += 1
                for run in (lambda: s.allow("10.0.%d.0/24" % (n % 7), T0),
                            lambda: s.deny("10.0.%d.0/24" % (n % 5), T0),
                            lambda: s.allow("x" * 300 + str(n % 3), T0),
                            lambda: s.purge(T0 + 40 * LIFE if n % 4 == 0 else T0)):
                    try:
                        run()
                    except StoreError:
                        pass  # a link where a directory should be: refused
        finally:
            open(stop, "w").close()
            os.waitpid(pid, 0)
        assert n > 10


def _swap_loop(victim, stop):
    """Swap every file for a link to victim/file and some directories for links to victim."""
    n, give_up = 0, time.monotonic() + 30
    while not os.path.exists(stop) and time.monotonic() < give_up:
        for directory, subdirs, files in os.walk("."):
            for name in files:
                n += 1
                path = os.path.join(directory, name)
                try:
                    os.symlink(os.path.join(victim, "file"), path + ".swap%d" % n)
                    os.rename(path + ".swap%d" % n, path)
                except OSError:
                    pass
            for name in subdirs:
                n += 1
                if n % 3:
                    continue
                path = os.path.join(directory, name)
                try:
                    os.rename(path, path + ".aside%d" % n)
                    os.symlink(victim, path)
                except OSError:
                    pass
            # Dead generations that point outside, for the next purge.
            for tree in ("grey", "pass"):
                try:
                    os.symlink(victim, os.path.join(tree, "100000%04d" % (n % 10000)))
                except OSError:
                    pass
