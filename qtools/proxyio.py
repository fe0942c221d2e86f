# SPDX-License-Identifier: ISC
"""The proxy's processes and descriptors: spawn the next program, relay, reap.

qtools.proxy holds the SMTP logic as a state machine fed bytes (Engine);
this module runs it: the next program as a child on a socketpair, poll
over the client's fds and the child's socket, TLS in memory, the timeouts,
and the child's end.
"""

import posix  # not os, whose import costs a connection most of a millisecond
import time

from qtools import core
from qtools.proxy import HIGH_WATER, TIMEOUT, Engine, Session

BLOCK = 1 << 16
IDLE_TIMEOUT = 1200  # qmail-smtpd's timeoutsmtpd default
TOTAL_TIMEOUT = 3600
CHILD_GRACE = 5.0  # seconds the child gets to leave after its input closes
# Past the total timeout, how long the reply to the end of a message is
# still awaited (RFC 5321 gives the client 10 minutes for it): a 421 while
# the message is being queued would have it sent, and delivered, twice.
QUEUE_WAIT = 600
# What the kernel may hold for the child to read, asked for above the
# default 208 KiB (net.core.wmem_max caps it): a message crosses in fewer
# wake-ups of the child, 5% less wall time for 10 MB in bench_proxy.py.
BACKEND_QUEUE = 1 << 20


class _TLS:
    """TLS on the client side, done in memory so the fds stay ours to poll."""

    def __init__(self, context):
        import ssl

        self.ssl = ssl
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.ready = False

    def feed(self, data, engine):
        """Decrypt client bytes (b"" at end of file) into the engine; return False on failure."""
        ssl = self.ssl
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()
        try:
            if not self.ready:
                self.obj.do_handshake()
                self.ready = True
            while True:
                plain = self.obj.read(BLOCK)
                if not plain:
                    engine.client_data(b"")
                    return True
                engine.client_data(plain)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return True
        except ssl.SSLZeroReturnError:
            engine.client_data(b"")
            return True
        except (ssl.SSLError, ssl.SSLEOFError) as error:
            core.warn(engine.prog, "TLS failed: %s" % (getattr(error, "reason", None) or error))
            return False

    def encrypt(self, engine):
        """Return the bytes to send to the client: the engine's replies once the handshake is done."""
        if self.ready and engine.to_client:
            try:
                self.obj.write(bytes(engine.to_client))
            except self.ssl.SSLError as error:  # the client ended TLS under us
                core.warn(engine.prog, "TLS failed: %s" % (error.reason or error))
                engine.abort(b"", "tls")
            del engine.to_client[:]
        return self.outgoing.read()


def relay(engine, server, infd=0, outfd=1, tls=None, idle=IDLE_TIMEOUT,
          total=TOTAL_TIMEOUT, clock=time.monotonic, grace=CHILD_GRACE, queue_wait=QUEUE_WAIT,
          shut=None):
    """Move bytes between the client fds, the engine and the backend socket until the end.

    Return why it ended: "eof", "421", "timeout", "barelf", "tls" or
    "gone".  Once the client has left and the backend's input is closed
    (the clock time goes in the list shut, when given), the backend gets
    grace seconds to answer and leave (queue_wait while it queues a
    message), then the proxy gives up.  Past the total timeout, a message
    being queued still gets its reply, for at most queue_wait seconds more.
    """
    import select

    IN, OUT = select.POLLIN | select.POLLHUP | select.POLLERR, select.POLLOUT
    sfd = server.fileno()
    for fd in {infd, outfd, sfd}:
        posix.set_blocking(fd, False)
    start = last = clock()
    out = bytearray()  # bytes for the client, encrypted once TLS is on
    secure = None
    shut_at = None
    client_eof = False
    while True:
        if secure is not None:
            out += secure.encrypt(engine)
        elif engine.to_client:
            out += engine.to_client
            del engine.to_client[:]
        # Write at once what each side takes without blocking: poll waits
        # only for what is left (a wake-up less per command and reply), and
        # the next turn of the loop writes it, so this is the one place
        # that writes.
        if out:
            try:
                del out[: posix.write(outfd, out[: 4 * BLOCK])]
                last = clock()
            except BlockingIOError:
                pass
            except OSError:
                return "gone"
        if engine.to_server and not engine.server_eof:
            try:
                del engine.to_server[: posix.write(sfd, engine.to_server[: 4 * BLOCK])]
            except BlockingIOError:
                pass
            except OSError:  # the backend is gone; what it said is still read
                del engine.to_server[:]
        if engine.tls_pending and not out:
            secure = _TLS(tls)
            engine.tls_started()
        now = clock()
        if not out and engine.finished():
            return engine.why or "eof"
        if client_eof and not out and engine.drained() and not engine.owes():
            # The client left and is owed nothing: do not wait for the backend.
            return "eof"
        if engine.client_eof and engine.drained() and shut_at is None:
            shut_at = now
            if shut is not None:
                shut.append(now)
            try:
                server.shutdown(1)  # the backend reads EOF as the client leaving
            except OSError:
                pass
        queuing = engine.queuing()
        # The end of a message is answered even past the total timeout.
        end = start + total + (queue_wait if queuing else 0) if total else None
        leave = shut_at + (queue_wait if queuing else grace) if shut_at is not None else None
        masks = {}
        if (not client_eof and engine.wants_input() and len(out) < HIGH_WATER
                and (end is None or now < start + total)):
            # A client that does not read its replies is not read either.
            masks[infd] = select.POLLIN
        if out:
            masks[outfd] = masks.get(outfd, 0) | OUT
        if not engine.server_eof:
            if len(out) < HIGH_WATER:
                masks[sfd] = select.POLLIN
            if engine.to_server:
                masks[sfd] = masks.get(sfd, 0) | OUT
        limits = []
        due = engine.deadline()
        if due is not None:
            limits.append(due - now)
        if idle and not queuing and (client_eof or not engine.owes()):
            limits.append(last + idle - now)
        if end is not None:
            limits.append((start + total if not queuing else end) - now)
        if leave is not None:
            limits.append(leave - now)
        if not masks and not limits:
            return "eof"
        poller = select.poll()
        for fd, mask in masks.items():
            poller.register(fd, mask)
        timeout = max(0.0, min(limits)) * 1000 if limits else None
        for fd, event in poller.poll(timeout):
            if fd == sfd and event & IN:
                try:
                    data = posix.read(sfd, BLOCK)
                except BlockingIOError:
                    data = None
                except OSError:
                    data = b""
                if data is not None:
                    engine.server_data(data)
            if fd == infd and event & IN:
                try:
                    data = posix.read(infd, BLOCK)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                last = clock()
                client_eof = not data
                if secure is None:
                    engine.client_data(data)
                elif not secure.feed(data, engine):
                    return "tls"
        engine.tick()
        now = clock()
        queuing = engine.queuing()
        end = start + total + (queue_wait if queuing else 0) if total else None
        if ((total and now >= end)
                or (idle and not queuing and (client_eof or not engine.owes())
                    and now - last >= idle)
                or (shut_at is not None and now >= shut_at + (queue_wait if queuing else grace))):
            engine.abort(TIMEOUT, "timeout")



def spawn(argv, environ):
    """Start argv with environ on a socketpair as its fds 0 and 1; return (pid, our socket)."""
    import _signal
    import _socket  # the socket module costs more than the rest of a connection

    path = core._which(argv[0], environ.get("PATH"))
    if path is None:
        raise core.Die(core.TEMP_EXIT, "unable to run %s: no such file or directory" % argv[0])
    ours, theirs = _socket.socketpair()
    try:
        ours.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF, BACKEND_QUEUE)
    except OSError:
        pass  # the default works, only slower
    try:
        pid = posix.posix_spawn(
            path, argv, environ,
            file_actions=[
                (posix.POSIX_SPAWN_DUP2, theirs.fileno(), 0),
                (posix.POSIX_SPAWN_DUP2, theirs.fileno(), 1),
            ],
            setsigdef=(_signal.SIGPIPE,),  # Python ignores it; the child must not
        )
    except OSError as error:
        ours.close()
        raise core.Die(core.TEMP_EXIT, "unable to run %s: %s" % (argv[0], core.strerror(error)))
    finally:
        theirs.close()
    return pid, ours


def _wait(pid, seconds):
    """Return waitpid's (pid, status) once the child has ended, or (0, 0) after seconds."""
    # A pidfd wakes us the moment the child ends; without one (old kernel,
    # other system) waitpid is polled, never in a busy loop.
    try:
        fd = posix.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        import select

        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            poller.poll(seconds * 1000)
        finally:
            posix.close(fd)
        return posix.waitpid(pid, posix.WNOHANG)
    deadline = time.monotonic() + seconds
    while True:
        done = posix.waitpid(pid, posix.WNOHANG)
        if done[0] or time.monotonic() >= deadline:
            return done
        time.sleep(0.02)


def reap(pid, grace=CHILD_GRACE):
    """Wait for the child, ending it if it stays; return (exit code or -signal, ended by us)."""
    import _signal

    for sig, wait in ((None, grace), (_signal.SIGTERM, 2.0), (_signal.SIGKILL, None)):
        if sig is not None:
            try:
                posix.kill(pid, sig)
            except ProcessLookupError:
                pass
        done, status = posix.waitpid(pid, 0) if wait is None else _wait(pid, wait)
        if done:
            return posix.waitstatus_to_exitcode(status), sig is not None
    return -9, True


def _seconds(environ, name, default):
    text = environ.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text, 10)
    except ValueError:
        value = -1
    if value < 0:
        raise core.Die(core.USAGE_EXIT, "invalid $%s: %s" % (name, core.clean(text)))
    return value


def tls_context(prog, environ):
    """Return an ssl context from $QTOOLS_TLS_CERT/$QTOOLS_TLS_KEY, or None without one."""
    cert = environ.get("QTOOLS_TLS_CERT")
    if not cert:
        return None
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, environ.get("QTOOLS_TLS_KEY") or None)
    except (OSError, ssl.SSLError) as error:
        # Our failure: go on without STARTTLS rather than refuse mail.
        core.warn(prog, "unable to load %s: %s" % (cert, getattr(error, "strerror", None) or error))
        return None
    return context


class _Terminated(Exception):
    pass


def _terminate(signum, frame):
    raise _Terminated()


def run(filters, argv, environ, infd=0, outfd=1):
    """Proxy the connection on infd/outfd to argv through filters; return the exit code."""
    import _signal

    prog = filters[0][0]
    client = core.client(environ)
    idle = _seconds(environ, "QTOOLS_IDLE_TIMEOUT", IDLE_TIMEOUT)
    total = _seconds(environ, "QTOOLS_TOTAL_TIMEOUT", TOTAL_TIMEOUT)
    tls = tls_context(prog, environ)
    engine = Engine(filters, Session(client, environ), tls=tls is not None)
    pid, server = spawn(argv, environ)
    _signal.signal(_signal.SIGTERM, _terminate)
    why, shut = "error", []
    try:
        why = relay(engine, server, infd, outfd, tls, idle, total, shut=shut)
    except _Terminated:
        why = "terminated"
    finally:
        _signal.signal(_signal.SIGTERM, _signal.SIG_DFL)
        server.close()
        for fd in {infd, outfd}:
            try:
                posix.close(fd)  # the client sees the end now, not after the child
            except OSError:
                pass
        # A backend that outstayed its grace after its input was closed
        # (the proxy gave up on it) is ended at once.
        stuck = why == "timeout" and shut and time.monotonic() - shut[0] >= CHILD_GRACE
        status, ended = reap(pid, 0.0 if stuck else CHILD_GRACE)
    fields = [("why", why)]
    fields.append(("status", status) if status >= 0 else ("signal", -status))
    core.log(prog, client.ip, "end", fields)
    if ended or why != "eof":
        return 0
    return status if status >= 0 else core.TEMP_EXIT
