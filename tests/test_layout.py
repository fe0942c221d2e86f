# SPDX-License-Identifier: ISC
"""The package's shape: every program has its module, bin script, man page and tests."""

import importlib
import os
import re
import shutil
import subprocess

import pytest

from qtools import core

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAMS = sorted(core.PROGRAMS) + ["qtools-adaptive", "qtools-list", "qtools-mkcdb",
                                      "qtools-queue", "qtools-report"]
# qtools.list would read as the builtin's name: the module of qtools-list is listedit.
MODULES = {"qtools-list": "qtools.listedit"}


def module_of(program):
    if program in MODULES:
        return MODULES[program]
    if program.startswith("qtools-"):
        return "qtools." + program[len("qtools-"):]
    return core.PROGRAMS[program]


def man_synopsis(program):
    """Return the SYNOPSIS of man/PROGRAM.8 as one line of plain text."""
    with open(os.path.join(REPO, "man", program + ".8")) as f:
        text = f.read()
    section = text.split(".SH SYNOPSIS", 1)[1].split(".SH", 1)[0]
    words = []
    for line in section.splitlines():
        line = line.strip()
        if not line or line.startswith((".PP", ".br", ".sp", ".nf", ".fi", '.\\"')):
            continue
        line = re.sub(r"^\.(B|I|BR|IR|RB|RI|BI|IB)\s+", "", line)
        line = re.sub(r"\\f[BIRP]", "", line).replace("\\-", "-").replace("\\&", "").replace('"', "")
        words.append(line)
    return " ".join(" ".join(words).split())


@pytest.mark.parametrize("program", PROGRAMS)
def test_program_has_bin_module_man_and_tests(program):
    """One program = one module = one bin script = one man page = one test file."""
    script = os.path.join(REPO, "bin", program)
    assert os.access(script, os.X_OK)
    with open(script) as f:
        assert f.read() == "#!/usr/bin/env python3\nfrom %s import main\nraise SystemExit(main())\n" % module_of(program)
    assert os.path.exists(os.path.join(REPO, "man", program + ".8"))
    test_name = "test_%s.py" % module_of(program).split(".")[1]
    assert os.path.exists(os.path.join(REPO, "tests", test_name))


@pytest.mark.parametrize("program", PROGRAMS)
def test_man_synopsis_is_the_usage(program):
    """The man page's SYNOPSIS says word for word what the program's usage line says."""
    usage = importlib.import_module(module_of(program)).USAGE
    assert forms(man_synopsis(program), program) == forms(usage, program)


def forms(synopsis, program):
    """Fold spacing; "a | b" alternatives read as one form a line, as a page may show them."""
    return " ".join(synopsis.split()).replace(" | -", " %s -" % program)


@pytest.mark.parametrize("page", sorted(p for p in os.listdir(os.path.join(REPO, "man")) if p[-2:] in (".7", ".8")))
def test_man_page_lints_clean(page):
    """Every man page passes mandoc -Tlint at warning level."""
    if shutil.which("mandoc") is None:
        pytest.fail("mandoc is not installed: run make test, which installs it")
    done = subprocess.run(
        ["mandoc", "-Tlint", "-W", "warning", os.path.join(REPO, "man", page)],
        capture_output=True,
        text=True,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_overview_page_names_every_program():
    """qtools(7) points to every program's page."""
    with open(os.path.join(REPO, "man", "qtools.7")) as f:
        text = f.read()
    for program in PROGRAMS:
        name = re.escape(program).replace("\\-", r"\\?-")
        assert re.search(r"\.BR %s \(8\)" % name, text), program


def chain_of_run_script():
    """Return the chain of examples/run after tcpserver's arguments, as argv."""
    with open(os.path.join(REPO, "examples", "run")) as f:
        text = f.read().replace("\\\n", " ")
    command = [line for line in text.splitlines() if line.startswith("exec ")][0]
    words = command.split()
    start = words.index("smtp") + 1
    end = words.index("2>&1")
    return words[start:end]


def test_example_run_script_chain_is_accepted(tmp_path):
    """The chain in examples/run parses, and a relay client goes through it all."""
    from conftest import run_prog

    chain = [w.replace("/var/qmail/greylist", str(tmp_path)) for w in chain_of_run_script()]
    assert chain[0] == "throttle" and chain[-1] == "/var/qmail/bin/qmail-smtpd"
    chain[-1] = shutil.which("true")
    result = run_prog(chain, env={"TCPREMOTEIP": "192.0.2.7", "RELAYCLIENT": ""})
    assert (result.rc, result.out) == (0, b"")
    assert b"fatal" not in result.err and b"usage" not in result.err


def test_example_tcp_smtp_builds_as_tcprules_builds_it(tmp_path):
    """examples/tcp.smtp gives the same cdb from qtools-mkcdb and from tcprules."""
    from conftest import run_prog

    with open(os.path.join(REPO, "examples", "tcp.smtp"), "rb") as f:
        text = f.read()
    ours, theirs = tmp_path / "ours.cdb", tmp_path / "theirs.cdb"
    assert run_prog(["qtools-mkcdb", str(ours), str(ours) + ".tmp"], stdin=text).rc == 0
    if shutil.which("tcprules") is None:
        pytest.fail("tcprules is not installed: run make test, which installs ucspi-tcp")
    subprocess.run(["tcprules", str(theirs), str(theirs) + ".tmp"], input=text, check=True)
    assert ours.read_bytes() == theirs.read_bytes()


def test_example_shell_scripts_parse():
    """The example run scripts and the demo are valid sh."""
    for name in ("run", "log/run", "demo"):
        done = subprocess.run(["sh", "-n", os.path.join(REPO, "examples", name)], capture_output=True)
        assert done.returncode == 0, (name, done.stderr)


def tcpserver_commands(text):
    """Yield each tcpserver command line of a text, continuation lines joined."""
    text = re.sub(r"\\\n", " ", text)
    for line in text.splitlines():
        at = line.find("tcpserver ")
        if at >= 0:
            yield line[at:]


def tcpserver_ids(command):
    """Return the (letter, value) of -u and -g, read with tcpserver's own options."""
    found = []
    words = command.split()[1:]
    while words and words[0].startswith("-") and len(words[0]) > 1:
        word = words.pop(0)
        for at, letter in enumerate(word[1:], 1):
            if letter in "xtugblBcC":  # ucspi-tcp 0.88's options with an argument
                value = word[at + 1:] or (words.pop(0) if words else "")
                if letter in "ug":
                    found.append((letter, value))
                break
    return found


def documents():
    """Yield (name, plain text) of the README, the examples and every man page."""
    names = ["README", "examples/run", "examples/demo"] + [
        "man/" + p for p in sorted(os.listdir(os.path.join(REPO, "man"))) if p[-2:] in (".7", ".8")]
    for name in names:
        with open(os.path.join(REPO, name)) as f:
            text = f.read()
        if name.startswith("man/"):
            text = text.replace("\\-", "-").replace("\\e", "\\").replace("\\(aq", "'")
        yield name, text


def test_run_scripts_give_tcpserver_numeric_ids():
    """tcpserver reads -u qmaild as 0 (root): every -u and -g is a number or id(1)'s answer."""
    checked = 0
    for name, text in documents():
        ids = set(re.findall(r"^\s*(\w+)=`id -[ug] \w+`", text, re.M))
        ids |= set(re.findall(r"^\s*(\w+)=\$\(id -[ug] \w+\)", text, re.M))
        for command in tcpserver_commands(text):
            for _, value in tcpserver_ids(command):
                checked += 1
                value = value.strip('"')
                assert value.isdigit() or value.lstrip("$").strip("{}") in ids, (name, command)
    assert checked >= 16  # the README's and every page's run script were seen


def test_the_fragment_check_sees_a_name():
    """The check above fails on the mistake it is for, however the options are written."""
    bad = 'exec tcpserver -v -x /etc/tcp.smtp.cdb -uqmaild -Rg nofiles 0 smtp \\\n  rhostcheck -g -u\n'
    assert tcpserver_ids(next(tcpserver_commands(bad))) == [("u", "qmaild"), ("g", "nofiles")]


def test_example_run_script_asks_the_allow_list_first():
    """The first list that decides wins: the DNSWL (-a) comes before the blocklist (-r)."""
    chain = chain_of_run_script()
    options = chain[chain.index("rblcheck"):chain.index("greylist")]
    assert options.index("-a") < options.index("-r")


def test_example_crontab_finds_the_installed_programs():
    """cron's default PATH (/usr/bin:/bin) lacks $PREFIX/bin: the crontab sets one that has it."""
    with open(os.path.join(REPO, "examples", "crontab")) as f:
        lines = [line for line in f.read().splitlines() if line and not line.startswith("#")]
    assert lines[0].startswith("PATH=")
    assert "/usr/local/bin" in lines[0][5:].split(":")


def test_makefile_installs_every_program_in_bin():
    """make install installs the Makefile's PROGRAMS: every script in bin/ must be there."""
    with open(os.path.join(REPO, "Makefile")) as f:
        line = next(line for line in f if line.startswith("PROGRAMS ="))
    assert sorted(line.split("=", 1)[1].split()) == sorted(os.listdir(os.path.join(REPO, "bin")))
