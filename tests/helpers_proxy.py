# SPDX-License-Identifier: ISC
"""A scripted qmail-smtpd stand-in for the proxy tests, in-process or as a program.

It frames its input exactly as qmail-smtpd does (a command ends at LF, one
CR before it is dropped; DATA ends on CR LF . CR LF and a stray LF is
fatal), remembers every command and message it saw, and answers like
qmail-smtpd.  As a program (python helpers_proxy.py RAWFILE) it speaks on
stdin/stdout and appends every byte it receives to RAWFILE.
"""

import os
import sys

from qtools.address import read

EHLO = (
    b"250-fake.local\r\n250-PIPELINING\r\n250-STARTTLS\r\n250-CHUNKING\r\n"
    b"250 8BITMIME\r\n"
)
STRAY = b"451 See http://pobox.com/~djb/docs/smtplf.html.\r\n"


class FakeQmail:
    """A backend fed bytes that returns its replies."""

    def __init__(self, greeting=b"220 fake.local ESMTP\r\n", answers=None, addrparse=True):
        self.greeting = greeting
        # qmail-smtpd answers a MAIL or RCPT whose address addrparse()
        # cannot read with 555 and keeps its transaction as it was;
        # addrparse=False stands for a backend that takes any address.
        self.addrparse = addrparse
        self.answers = dict(answers or {})  # verb -> reply, to script refusals
        self.commands = []  # lines without their ending, as qmail-smtpd parses them
        self.messages = []  # bodies as received, dots and CRs included
        self.raw = bytearray()
        self.buffer = bytearray()
        self.data = False
        self.state = 1
        self.body = bytearray()
        self.mail = self.rcpt = False
        self.dead = False

    def feed(self, data):
        """Take bytes; return the replies they cause."""
        self.raw += data
        out = bytearray()
        for i in range(len(data)):
            if self.dead:
                break
            byte = data[i : i + 1]
            if self.data:
                out += self._blast(byte)
                continue
            if byte != b"\n":
                self.buffer += byte
                continue
            line = bytes(self.buffer)
            self.buffer = bytearray()
            if line.endswith(b"\r"):
                line = line[:-1]
            out += self._command(line)
        return bytes(out)

    def _command(self, line):
        self.commands.append(line)
        # commands.c: the line is a C string (a NUL ends it), the verb ends
        # at the first space.
        verb = line.split(b"\0", 1)[0].split(b" ", 1)[0].lower()
        if verb in self.answers:
            return self.answers[verb]
        if verb == b"ehlo":
            return EHLO
        if verb in (b"helo", b"noop"):
            return b"250 fake.local\r\n"
        if verb == b"rset":
            self.mail = self.rcpt = False
            return b"250 flushed\r\n"
        if verb in (b"mail", b"rcpt") and self.addrparse and read(line).path is None:
            return b"555 syntax error (#5.5.4)\r\n"
        if verb == b"mail":
            self.mail, self.rcpt = True, False
            return b"250 ok\r\n"
        if verb == b"rcpt":
            if not self.mail:
                return b"503 MAIL first (#5.5.1)\r\n"
            self.rcpt = True
            return b"250 ok\r\n"
        if verb == b"data":
            if not self.rcpt:
                return b"503 RCPT first (#5.5.1)\r\n"
            self.data, self.state, self.body = True, 1, bytearray()
            return b"354 go ahead\r\n"
        if verb == b"quit":
            self.dead = True
            return b"221 fake.local\r\n"
        return b"502 unimplemented (#5.5.1)\r\n"

    def _blast(self, ch):
        # qmail-smtpd's blast() states: 0 in a line, 1 after CR LF,
        # 2 after CR LF ".", 3 after CR LF "." CR, 4 after CR.
        state = self.state
        self.body += ch
        if ch == b"\n" and state in (0, 1, 2):
            self.dead = True
            return STRAY
        if state == 3 and ch == b"\n":
            self.messages.append(bytes(self.body))
            self.data = self.mail = self.rcpt = False
            return b"250 ok queued\r\n"
        if state == 1 and ch == b".":
            self.state = 2
        elif ch == b"\r":
            self.state = 3 if state == 2 else 4
        elif state == 4 and ch == b"\n":
            self.state = 1
        else:
            self.state = 0
        return b""


def deliver(engine, backend):
    """Hand everything the engine has for the backend to it, and its replies back."""
    while engine.to_server:
        data = bytes(engine.to_server)
        del engine.to_server[:]
        replies = backend.feed(data)
        if replies:
            engine.server_data(replies)
        if backend.dead and not engine.server_eof:
            engine.server_data(b"")


def converse(engine, backend, chunks):
    """Feed client chunks through engine to backend; return what the client got."""
    engine.server_data(backend.greeting)
    got = bytearray()

    def pump():
        deliver(engine, backend)
        got.extend(engine.to_client)
        del engine.to_client[:]

    pump()
    for chunk in chunks:
        if engine.closing or engine.tls_pending:
            break
        engine.client_data(chunk)
        pump()
    return bytes(got)


def main(argv):
    backend = FakeQmail()
    with open(argv[1], "ab", buffering=0) as raw:
        try:
            os.write(1, backend.greeting)
            while not backend.dead:
                data = os.read(0, 65536)
                if not data:
                    break
                raw.write(data)
                replies = backend.feed(data)
                if replies:
                    os.write(1, replies)
        except OSError:
            return 1  # the proxy hung up: qmail-smtpd's safewrite() does _exit(1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
