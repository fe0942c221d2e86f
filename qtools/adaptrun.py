# SPDX-License-Identifier: ISC
"""qtools-adaptive's two ways of running: over the logs, and the -q, -l, -u commands."""

import os
import sys

from qtools import core


def open_allow(path):
    """Return the opened allow-list cdb, or None without -a; an unreadable one is fatal."""
    if path is None:
        return None
    from qtools.cdb import Reader

    try:
        return Reader(path)
    except OSError as error:
        # without it a trusted client could be blocked: better no run at all
        raise core.Die(core.TEMP_EXIT, "unable to open %s: %s" % (path, core.strerror(error)))


def _stdin_lines(copy):
    out = sys.stdout.buffer if copy else None
    for raw in sys.stdin.buffer:
        if out is not None:
            out.write(raw)  # a multilog processor's output is the archive
        if raw.endswith(b"\n"):
            yield raw.decode("utf-8", "replace")
    if out is not None:
        out.flush()


def follow(prog, make_run, state, rules, allow_path, flags, rest, now, writer):
    """Read the new lines of each logdir (or standard input), then write the cdb."""
    from qtools import adaptive, logread

    allow = open_allow(allow_path)
    state.lock()
    state.load()
    run = make_run(rules, state, allow, now)
    if len(rest) > 2:
        follower = logread.Follower(state.positions)
        for logdir in rest[2:]:
            if not os.path.isdir(logdir):
                raise core.Die(core.TEMP_EXIT, "unable to read %s: not a directory" % logdir)
            try:
                for text in follower.lines(logdir):
                    run.line(text)
            except OSError as error:
                why = core.strerror(error)
                raise core.Die(core.TEMP_EXIT, "unable to read %s: %s" % (logdir, why))
    else:
        for text in _stdin_lines("P" in flags):
            run.line(text)
    if state.shared:
        run.sync()
    else:
        run.tracker.prune(now)
        state.save(run.tracker.dump(), now)
    blocks = state.current(now)
    if allow is not None:
        blocks = {k: v for k, v in blocks.items()
                  if not run.allowed(k, core.parse_ip(k.split("/")[0])[1])}
    text = adaptive.records(blocks, rules, "B" in flags)
    adaptive.write_cdb(rest[1], text, writer)
    return 0


def command(prog, command, state, rules, cdb_path, flags, now, writer):
    """-q ip: say whether ip is blocked; -l: list the blocks; -u ip: lift a block."""
    from qtools import adaptive

    letter, value = command
    if letter == "u":
        key = _key(value)
        state.lock()
        state.load()
        found = state.lift(key)
        if not state.shared:
            state.save(state.windows, now)
        blocks = state.current(now)
        adaptive.write_cdb(cdb_path, adaptive.records(blocks, rules, "B" in flags), writer)
        if not found:
            raise core.Die(core.USAGE_EXIT, "%s is not blocked" % key)
        core.log(prog, key, "lift", (("why", "admin"),))
        return 0
    state.load()
    blocks = state.current(now)
    if letter == "q":
        key = _key(value)
        parsed = core.parse_ip(key.split("/")[0])
        candidates = [key]
        if "/" not in key and len(parsed[1]) == 16:
            candidates.append(core.network_of(parsed[1], rules.v6_bits))
        found = [k for k in candidates if k in blocks]
        if not found:
            print("%s: not blocked" % key)
            return 100
        blocks = {k: blocks[k] for k in found}
    for key, block in sorted(blocks.items(), key=lambda item: item[1]["until"]):
        print("%s: blocked until %s (%d of %d attempts bad, offence %d)" % (
            key, adaptive.stamp(block["until"]), block["bad"], block["attempts"],
            block["offences"] + 1))
    return 0


def _key(text):
    """Return the state key of an address or network given on the command line."""
    address, slash, bits = text.partition("/")
    parsed = core.parse_ip(address)
    if parsed is None or (slash and not bits.isdigit()):
        raise core.Usage("invalid address: %s" % core.clean(text))
    if slash:
        return core.network_of(parsed[1], int(bits))
    return core.format_ip(parsed[1])
