# SPDX-License-Identifier: ISC
"""The refusal conversation: a limited SMTP server that says no at RCPT.

Each line is read as qmail-smtpd reads it (qtools.address.read, the proxy's
one reading): a NUL ends what counts of it, the verb ends at the first
space, and the sender is what addrparse() makes of MAIL's argument.
"""

import os
import time

from qtools import address

# Replies the conversation makes itself, qmail style.
TIMEOUT = "421 %s timeout, closing connection (#4.4.2)"
TOO_MANY = "421 %s too many commands, closing connection (#4.7.0)"

# Verbs that get "250": the client may greet, reset and start a
# transaction, and hears the refusal when it names a recipient, so a
# legitimate sender bounces with our text or retries (rblsmtpd's table).
OK_VERBS = frozenset((b"helo", b"ehlo", b"mail", b"rset", b"noop"))


def greeting_name(prog, environ):
    """Return the name shown in 220/250/221 replies: $QTOOLS_HOSTNAME or prog.local."""
    from qtools.core import clean

    return clean(environ.get("QTOOLS_HOSTNAME") or "%s.local" % prog, 255)


class Conversation:
    """Speak SMTP to a client we refuse, on fds infd/outfd."""

    def __init__(
        self,
        error,
        name,
        timeout=60,
        max_commands=100,
        max_line=1000,
        error_at_data_for_null_sender=False,
        infd=0,
        outfd=1,
        clock=time.monotonic,
    ):
        from qtools.core import clean

        self.error = clean(error, 1000).encode("ascii") + b"\r\n"
        self.name = clean(name, 255)
        self.timeout = timeout
        self.max_commands = max_commands
        self.max_line = max_line
        self.at_data = error_at_data_for_null_sender
        self.infd = infd
        self.outfd = outfd
        self.clock = clock
        self.null_sender = False

    def reply_to(self, line):
        """Return the reply to one command line (CR already removed)."""
        command = address.read(line)
        verb = command.verb
        if verb == b"quit":
            return ("221 %s\r\n" % self.name).encode()
        if verb in OK_VERBS:
            if verb == b"mail":
                # qmail-smtpd's null sender: "MAIL FROM:<>", but also "MAIL"
                # alone or "MAIL\0FROM:<a@b>" (addrparse() of an empty argument).
                self.null_sender = self.at_data and command.path == b""
            elif verb == b"rset":
                self.null_sender = False
            return ("250 %s\r\n" % self.name).encode()
        if verb == b"rcpt" and self.null_sender:
            # Bounces carry no sender to retry with a per-recipient
            # deferral; defer them at DATA, where the whole message waits.
            return ("250 %s\r\n" % self.name).encode()
        return self.error

    def run(self):
        """Hold the conversation until QUIT, EOF, the command limit or the timeout."""
        try:
            return self._run()
        except OSError:  # the client went away: nothing left to say
            return 0

    def _send(self, data):
        while data:
            data = data[os.write(self.outfd, data) :]

    def _run(self):
        import select

        if self.timeout == 0:
            # rblsmtpd -t 0: say the error once, read nothing.
            self._send(self.error)
            return 0
        deadline = self.clock() + self.timeout
        self._send(("220 %s\r\n" % self.name).encode())
        poller = select.poll()
        poller.register(self.infd, select.POLLIN)
        buffer = b""
        discarding = False
        commands = 0
        while True:
            left = deadline - self.clock()
            if left <= 0 or not poller.poll(left * 1000):
                self._send((TIMEOUT % self.name).encode() + b"\r\n")
                return 0
            data = os.read(self.infd, 4096)
            if not data:
                return 0
            buffer += data
            while True:
                end = buffer.find(b"\n")
                if end < 0:
                    if len(buffer) > self.max_line:
                        # Over-long line: keep memory bounded, answer it
                        # once when its LF finally arrives.
                        discarding = True
                        buffer = b""
                    break
                line, buffer = buffer[:end], buffer[end + 1 :]
                commands += 1
                if commands > self.max_commands:
                    self._send((TOO_MANY % self.name).encode() + b"\r\n")
                    return 0
                if discarding or len(line) > self.max_line:
                    discarding = False
                    self._send(self.error)
                    continue
                if line.endswith(b"\r"):
                    line = line[:-1]
                reply = self.reply_to(line)
                self._send(reply)
                if reply.startswith(b"221 "):
                    return 0


def refuse(error, name, timeout=60, **options):
    """Hold the refusal conversation with error ("451 text") on fds 0/1."""
    return Conversation(error, name, timeout, **options).run()
