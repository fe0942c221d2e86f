# SPDX-License-Identifier: ISC
"""The chain core: options, environment, messages, decision log, hand-off."""

import posix  # not os: loading os costs a tenth of an installed program's start
import sys

# Programs that may be run in the same process when they follow each other
# in a chain.  qtools-mkcdb is not a chain program.
PROGRAMS = {
    "greylist": "qtools.greylist",
    "mfcheck": "qtools.mfcheck",
    "rblcheck": "qtools.rblcheck",
    "rhostcheck": "qtools.rhostcheck",
    "tarpit": "qtools.tarpit",
    "throttle": "qtools.throttle",
    "validrcptto": "qtools.validrcptto",
}

USAGE_EXIT = 100
TEMP_EXIT = 111


class Die(Exception):
    """A program must stop with an exit code and a message on stderr."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


class Usage(Exception):
    """The command line does not fit the program's usage."""


def _write_err(line):
    # fd 2 directly, unbuffered, as djb's programs do: a line is never lost
    # in a buffer when the process is replaced by exec.  Every line passes
    # clean(): a message may hold outside text (a path, a server's error).
    data = (clean(line, None) + "\n").encode("ascii")
    try:
        posix.write(2, data)
    except OSError:
        pass


def fatal(prog, message):
    _write_err("%s: fatal: %s" % (prog, message))


def warn(prog, message):
    _write_err("%s: warning: %s" % (prog, message))


def info(prog, message):
    _write_err("%s: info: %s" % (prog, message))


def strerror(error):
    """Return the lowercase system error text skarnet and djb print."""
    text = error.strerror or str(error)
    return text[:1].lower() + text[1:]


def getopt(argv, optstring):
    """Split argv into options and the rest, POSIX style.

    Options end at the first argument that is not an option, or at "--".
    Return (list of (letter, argument or None), rest); raise Usage on an
    unknown option or a missing argument.
    """
    options = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        j = 1
        while j < len(arg):
            letter = arg[j]
            where = optstring.find(letter)
            if letter == ":" or where < 0:
                raise Usage("illegal option -- %s" % letter)
            if optstring[where + 1 : where + 2] == ":":
                value = arg[j + 1 :]
                if not value:
                    i += 1
                    if i >= len(argv):
                        raise Usage("option requires an argument -- %s" % letter)
                    value = argv[i]
                options.append((letter, value))
                break
            options.append((letter, None))
            j += 1
        i += 1
    return options, argv[i:]


def number(prog, letter, text, low=0, high=None):
    """Return text as a whole number for option letter, or raise Usage."""
    try:
        value = int(text, 10)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        raise Usage("invalid value for -%s: %s" % (letter, text))
    return value


def seconds(text, high=3600):
    """Return a time limit from text ("10", "0.5"): seconds above 0, at most high; or raise ValueError."""
    value = float(text)
    if not 0 < value <= high:  # nan too; 0 would make a socket non-blocking
        raise ValueError(text)
    return value


def dns_options(prog, options, dns_timeout):
    """Take -t, -T and -S, which rblcheck and rhostcheck share, out of getopt's options.

    Return (timeout, dns_timeout, servers, the other options); dns_timeout
    is the default for -T.
    """
    timeout, servers, others = 60, None, []
    for letter, value in options:
        if letter == "t":
            timeout = number(prog, letter, value)
        elif letter in "TS":
            from qtools import resolver  # only when asked: the pass path never loads it

            if letter == "T":
                dns_timeout = resolver.option_seconds(letter, value)
            else:
                servers = resolver.option_servers(letter, value)
        else:
            others.append((letter, value))
    return timeout, dns_timeout, servers, others


# --- Environment -----------------------------------------------------------


class Override:
    """What a $RBLSMTPD-style variable says: check, skip, or refuse."""

    __slots__ = ("action", "text", "permanent")

    def __init__(self, action, text="", permanent=False):
        self.action = action
        self.text = text
        self.permanent = permanent

    def __repr__(self):
        return "Override(%r, %r, permanent=%r)" % (self.action, self.text, self.permanent)

    def __eq__(self, other):
        return isinstance(other, Override) and (
            (self.action, self.text, self.permanent)
            == (other.action, other.text, other.permanent)
        )


def override(environ, name):
    """Read $name on the $RBLSMTPD pattern.

    Unset: do the check.  Empty: skip it.  Text: refuse with that text,
    temporarily (4xx).  Text starting with "-": refuse permanently (5xx),
    with the text after the "-".
    """
    value = environ.get(name)
    if value is None:
        return Override("check")
    if value == "":
        return Override("skip")
    if value.startswith("-"):
        return Override("refuse", value[1:], permanent=True)
    return Override("refuse", value)


AF_INET = 2  # the same number on every system


def parse_ip(text):
    """Return (family, packed bytes) for an IPv4 or IPv6 address, or None.

    A v4-mapped IPv6 address (::ffff:192.0.2.1) is returned as IPv4, so a
    client gets the same key whichever socket tcpserver accepted it on.
    """
    text = (text or "").strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" not in text:
        # IPv4 without _socket, whose loading costs more than the rest
        # of a pass decision.
        packed = _ipv4(text.split("%", 1)[0])
        return None if packed is None else (AF_INET, packed)
    import _socket

    family = _socket.AF_INET6
    try:
        packed = _socket.inet_pton(family, text.split("%", 1)[0])
    except (OSError, ValueError):
        return None
    if family == _socket.AF_INET6 and packed[:12] == b"\0" * 10 + b"\xff\xff":
        return _socket.AF_INET, packed[12:]
    return family, packed


def _ipv4(text):
    """Return the 4 bytes of a dotted quad, read as inet_pton reads it, or None."""
    parts = text.split(".")
    if len(parts) != 4:
        return None
    for part in parts:
        if not (part.isdigit() and part.isascii()) or len(part) > 3:
            return None
        if len(part) > 1 and part[0] == "0":  # inet_pton refuses leading zeros
            return None
    values = [int(part) for part in parts]
    return bytes(values) if max(values) < 256 else None


def format_ip(packed):
    """Return the canonical text of a packed IPv4 or IPv6 address."""
    if len(packed) == 4:
        return "%d.%d.%d.%d" % tuple(packed)
    import _socket

    return _socket.inet_ntop(_socket.AF_INET6, packed)


def network(packed, v4_bits=24, v6_bits=64):
    """Return the network of an address as text: "192.0.2.0/24"."""
    return network_of(packed, v4_bits if len(packed) == 4 else v6_bits)


def network_of(packed, bits):
    """Return the network of bits that contains packed, as "base/bits"."""
    width = len(packed) * 8
    value = int.from_bytes(packed, "big")
    mask = ((1 << bits) - 1) << (width - bits) if bits else 0
    base = (value & mask).to_bytes(len(packed), "big")
    return "%s/%d" % (format_ip(base), bits)


def reverse_ip(packed):
    """Return the DNSBL / in-addr.arpa style label list, without a base.

    IPv4 reverses the octets; IPv6 gives the 32 nibbles lowest first
    (RFC 3596 section 2.5), as fehcom's rblsmtpd does.
    """
    if len(packed) == 4:
        return ".".join(str(b) for b in reversed(packed))
    nibbles = packed.hex()
    return ".".join(reversed(nibbles))


class Client:
    """The connection as tcpserver describes it in the environment."""

    __slots__ = ("ip", "packed", "host", "info", "local_ip", "relay")

    def __init__(self, ip, packed, host=None, info=None, local_ip=None, relay=False):
        self.ip = ip
        self.packed = packed
        self.host = host
        self.info = info
        self.local_ip = local_ip
        self.relay = relay


def client(environ):
    """Return the Client of this connection, or raise Die(100).

    TCPREMOTEIP may be IPv4, IPv6 or v4-mapped; TCP6REMOTEIP (set by the
    IPv6 tcpserver) is used when TCPREMOTEIP is missing.
    """
    text = environ.get("TCPREMOTEIP") or environ.get("TCP6REMOTEIP")
    if text is None:
        raise Die(USAGE_EXIT, "TCPREMOTEIP not set")
    parsed = parse_ip(text)
    if parsed is None:
        raise Die(USAGE_EXIT, "invalid $TCPREMOTEIP: %s" % clean(text))
    packed = parsed[1]
    host = environ.get("TCPREMOTEHOST") or None
    return Client(
        format_ip(packed),
        packed,
        host=host.lower() if host else None,
        info=environ.get("TCPREMOTEINFO") or None,
        local_ip=environ.get("TCPLOCALIP") or None,
        relay="RELAYCLIENT" in environ,
    )


def flag(environ, name, default):
    """Return $name as a yes/no switch: unset or empty gives default, "0" or "no" False."""
    value = environ.get(name)
    return default if value is None or value == "" else value not in ("0", "no")


MARK_VARIABLE = "QTOOLS_SUSPECT"


def mark(environ, tag):
    """Add tag ("rblcheck:bl.example") to $QTOOLS_SUSPECT for later programs."""
    old = environ.get(MARK_VARIABLE)
    environ[MARK_VARIABLE] = "%s %s" % (old, tag) if old else tag


def marks(environ):
    """Return the tags earlier programs left in $QTOOLS_SUSPECT."""
    return environ.get(MARK_VARIABLE, "").split()


TRUST_VARIABLE = "QTOOLS_TRUSTED"


def trust(environ, tag):
    """Set $QTOOLS_TRUSTED to tag ("rblcheck:list.dnswl.org"): later soft checks step aside."""
    environ[TRUST_VARIABLE] = tag


def trusted(environ):
    """Return True when tcp.smtp set WHITELISTED or an earlier program trusted the client."""
    return "WHITELISTED" in environ or bool(environ.get(TRUST_VARIABLE))


EXEMPT = "postmaster@ abuse@"  # RFC 5321 section 4.5.1: never deferred or refused
EXEMPT_VARIABLE = "MFCHECK_EXEMPT"


def exemptions(given, environ):
    """Return the recipient exemption list: $MFCHECK_EXEMPT when set, else given, else EXEMPT.

    given is the list of -e options (None or empty: none given); an entry is
    local@ (that local part at any domain), user@domain or @domain, and an
    empty one (-e "") leaves the list empty.  mfcheck and greylist -T read
    the same list, so one tcp.smtp variable spares a recipient from both.
    """
    if EXEMPT_VARIABLE in environ:
        given = environ[EXEMPT_VARIABLE].split()
    elif not given:
        return EXEMPT.split()
    return [entry for entry in given if entry]


# --- Replies and the decision log -------------------------------------------


def clean(text, limit=200):
    """Return outside text cut to limit characters of printable ASCII, "?" for every other.

    The one cleaning function: every byte from outside (environment, DNS,
    Redis, the client, stored texts) passes it before it reaches an SMTP
    reply or a log line, so no CR, LF, NUL or other control byte gets
    there, and no text crashes it: bytes are read as Latin-1 (rblsmtpd
    counts bytes), and the surrogates that stand for undecodable bytes in
    os.environ become "?" like any other character outside ASCII.
    """
    if isinstance(text, (bytes, bytearray)):
        text = text.decode("latin-1")
    if limit is not None:
        text = text[:limit]
    if text.isascii() and text.isprintable():
        return text
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def _field(value):
    text = clean(value if isinstance(value, (bytes, bytearray)) else str(value), 1000)
    if text == "" or " " in text or '"' in text or "=" in text:
        return '"%s"' % text.replace("\\", "\\\\").replace('"', '\\"')
    return text


def log_line(prog, ip, verdict, fields=()):
    """Return the decision log line: "prog: IP pid N: verdict k=v ...".

    The head is rblsmtpd's, so existing log parsers keep working.
    """
    parts = ["%s: %s pid %d: %s" % (prog, ip, posix.getpid(), verdict)]
    for key, value in fields:
        parts.append("%s=%s" % (key, _field(value)))
    return " ".join(parts)


def log(prog, ip, verdict, fields=()):
    _write_err(log_line(prog, ip, verdict, fields))


class Verdict:
    """What decide() concluded: pass, skip, mark or refuse, and why."""

    __slots__ = ("action", "code", "text", "why")

    def __init__(self, action, code=None, text="", why=()):
        self.action = action
        self.code = code
        self.text = text
        self.why = tuple(why)

    @property
    def reply(self):
        return "%d %s" % (self.code, clean(self.text, 1000))

    def __repr__(self):
        return "Verdict(%r, %r, %r, %r)" % (self.action, self.code, self.text, self.why)

    def __eq__(self, other):
        return isinstance(other, Verdict) and (
            (self.action, self.code, self.text, self.why)
            == (other.action, other.code, other.text, other.why)
        )


def exempt_entry(address, entries):
    """Return the entry of the exemption list (exemptions()) a recipient matches, or None."""
    local, at, domain = address.lower().rpartition("@")
    if not at:
        local = domain
    for entry in entries:
        entry = entry.lower()
        if entry in (address.lower(), local + "@", "@" + domain) and entry != "@":
            return entry
    return None


def step_aside(client, environ, name):
    """Return the Verdict for a client every check leaves alone or $name refuses, else None.

    RELAYCLIENT, WHITELISTED (cqgreylist's) and the trust mark skip; $name
    is read on the $RBLSMTPD pattern.
    """
    verdict = exempt_client(client, environ)
    if verdict is not None:
        return verdict
    wish = override(environ, name)
    if wish.action == "refuse":
        return from_override(wish)
    return Verdict("skip", why=(("why", "override"),)) if wish.action == "skip" else None


def exempt_client(client, environ):
    """Return the skip Verdict of a client with RELAYCLIENT, WHITELISTED or the trust mark."""
    if client.relay:
        return Verdict("skip", why=(("why", "relayclient"),))
    if "WHITELISTED" in environ:
        return Verdict("skip", why=(("why", "whitelisted"),))
    if environ.get(TRUST_VARIABLE):
        return Verdict("skip", why=(("why", "trusted"), ("trust", environ[TRUST_VARIABLE])))
    return None


def from_override(ov, default_code=451):
    """Turn a refusing Override into a refuse Verdict (553 when permanent)."""
    code = 553 if ov.permanent else default_code
    return Verdict("refuse", code, clean(ov.text), (("why", "override"),))


# --- Running a program and handing off ----------------------------------------

_launcher = None


def set_launcher(function):
    """Run function(argv, environ) instead of exec for the next external program.

    The proxy engine uses this to start once, after every proxy-level
    program of the chain has added its filter.
    """
    global _launcher
    _launcher = function


def _which(name, path):
    if "/" in name:
        return name
    for directory in (path or "/bin:/usr/bin").split(":"):
        directory = directory or "."
        candidate = directory + ("" if directory.endswith("/") else "/") + name
        try:
            regular = posix.stat(candidate).st_mode & 0o170000 == 0o100000
        except (OSError, ValueError):
            continue
        if regular and posix.access(candidate, 1):  # X_OK
            return candidate
    return None


def _directory_of(path):
    """Return (device, inode) of the directory holding path once its symlinks are followed, or None."""
    for _ in range(40):
        try:
            target = posix.readlink(path)
        except (OSError, ValueError):
            break  # not a symlink
        if not target.startswith("/") and "/" in path:
            target = path.rpartition("/")[0] + "/" + target
        path = target
    head = path.rpartition("/")[0] if "/" in path else "."
    try:
        st = posix.stat(head or "/")
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _home():
    """Return the directory our own program was started from, as _directory_of gives it."""
    return _directory_of(sys.argv[0] if sys.argv else "")


def in_process(argv, environ):
    """Return the module name to run in-process for argv, or None.

    Only a qtools chain program found in the same directory as the program
    now running counts: the same installation, so the same package.
    """
    name = argv[0].rpartition("/")[2]
    module = PROGRAMS.get(name)
    if module is None or environ.get("QTOOLS_EXEC") == "1":
        return None
    found = _which(argv[0], environ.get("PATH"))
    if found is None or _directory_of(found) is None or _directory_of(found) != _home():
        return None
    return module


def chain(prog, argv, environ):
    """Hand the connection to argv: in this process when it is one of ours,
    otherwise by exec.  Return an exit code only when the next program ran
    in this process; raise Die(111) when it cannot be run at all."""
    module = in_process(argv, environ)
    if module is not None:
        # __import__, not importlib: the importlib package costs more to
        # load than the module it would import.
        __import__(module)
        return sys.modules[module].main(argv[1:], environ)
    launcher = _launcher
    if launcher is not None:
        return launcher(argv, environ)
    exec_program(prog, argv, environ)


def running_as_program():
    """Return True when this process is a qtools program started by its name, not a caller of main()."""
    return (sys.argv[0] if sys.argv else "").rpartition("/")[2] in PROGRAMS


def leave(code):
    """End the program with code at once, as SystemExit(code) would end it.

    The interpreter's teardown (freeing every module and object) costs a
    connection about a millisecond and does nothing the kernel does not:
    the streams are flushed here, every descriptor closes with the process.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    posix._exit(code)


def exec_program(prog, argv, environ):
    """Replace this process by argv with environ; raise Die(111) on failure."""
    import _signal

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    # Python ignores SIGPIPE, and an ignored signal stays ignored across
    # execve: give the next program the default back.
    previous = _signal.signal(_signal.SIGPIPE, _signal.SIG_DFL)
    # The PATH search done here: os.execvpe's own loads the warnings module.
    found = _which(argv[0], environ.get("PATH"))
    try:
        if found is not None:
            posix.execve(found, argv, environ)
        import os  # for its error: the search above found nothing

        os.execvpe(argv[0], argv, environ)
    except (OSError, ValueError) as error:
        _signal.signal(_signal.SIGPIPE, previous)  # still us: EPIPE, not death
        text = strerror(error) if isinstance(error, OSError) else str(error)
        raise Die(TEMP_EXIT, "unable to run %s: %s" % (argv[0], text))


def version(prog):
    """Print "prog (qtools) VERSION" on stdout, as every program's --version does."""
    from qtools import __version__

    try:
        posix.write(1, ("%s (qtools) %s\n" % (prog, __version__)).encode())
    except OSError:
        return TEMP_EXIT
    return 0


def environment():
    """Return the process environment as os.environ reads it, without loading os."""
    code = sys.getfilesystemencoding()
    return {key.decode(code, "surrogateescape"): value.decode(code, "surrogateescape")
            for key, value in posix.environ.items()}


def main_of(prog, usage):
    """Wrap body(argv, environ) as main(argv=None, environ=None) -> int.

    The wrapper supplies sys.argv and os.environ, prints Die and Usage in
    the skarnet grammar and turns any other exception into
    "prog: fatal: internal error" and 111, never a traceback on the wire.
    """

    def decorate(body):
        def main(argv=None, environ=None):
            if argv is None:
                argv = sys.argv[1:]
            if environ is None:
                environ = environment()
            if argv[:1] == ["--version"]:
                return version(prog)
            try:
                code = body(list(argv), environ)
            except Usage as error:
                if str(error):
                    _write_err("%s: %s" % (prog, error))
                _write_err("%s: usage: %s" % (prog, usage))
                return USAGE_EXIT
            except Die as error:
                fatal(prog, error.message)
                return error.code
            except KeyboardInterrupt:
                return TEMP_EXIT
            except Exception as error:  # never a traceback on the SMTP wire
                fatal(prog, "internal error: %s: %s" % (type(error).__name__, error))
                return TEMP_EXIT
            return 0 if code is None else code

        main.__doc__ = body.__doc__
        main.__name__ = "main"
        main.prog = prog
        main.usage = usage
        return main

    return decorate



def act(prog, verdict, client_ip, argv, environ, timeout=60, tag=None, **conversation):
    """Carry out a connection-level verdict: log it, then hand off or refuse.

    pass and skip hand the connection on; mark adds tag to $QTOOLS_SUSPECT
    and hands on; refuse holds the refusal conversation and returns 0.
    """
    if verdict.action == "refuse":
        log(prog, client_ip, verdict.reply, verdict.why)
        from qtools import smtp

        name = smtp.greeting_name(prog, environ)
        return smtp.refuse(verdict.reply, name, timeout, **conversation)
    if verdict.action == "mark":
        mark(environ, tag or prog)
    log(prog, client_ip, verdict.action, verdict.why)
    return chain(prog, argv, environ)
