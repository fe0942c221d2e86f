# SPDX-License-Identifier: ISC
"""mfcheck's proxy filter: each MAIL judged by mfcheck.decide(), its refusal said at RCPT
to all but the exempt recipients, recipients capped, the protocol watched."""

import time

from qtools import core
from qtools.mfcheck import PROG, PROTOCOL, TOO_MANY, decide


def text(data):
    """Return bytes from the wire as text for the log and the tests."""
    return data.decode("latin-1")


class MailCheck:
    """The proxy filter: judge each MAIL, refuse at RCPT (sparing the exempt), cap recipients."""

    def __init__(self, config, asker, clock=time.time):
        from qtools.helocheck import Protocol

        self.config, self.asker, self.clock = config, asker, clock
        self.pending = None  # a refusal owed to the recipients of this transaction
        # The refusal of a MAIL in flight: it becomes pending only with the
        # backend's 2xx, as qmail-smtpd keeps the transaction before a MAIL
        # it refuses (and a MAIL a later filter refuses never reaches it).
        self.staged = None
        self.in_message = self.in_connection = 0
        self.protocol = Protocol(config.protocol)

    def command(self, session, verb, cmd):
        if session.authenticated:
            return None  # SMTP AUTH steps aside, as RELAYCLIENT does
        found = self.protocol.command(verb, cmd.barelf)
        for test, detail in sorted(found, key=lambda hit: hit[0] not in self.config.protocol_refuse):
            why = (("why", test), ("detail", detail))
            if test in self.config.protocol_refuse:
                session.log(PROTOCOL, why)
                return (PROTOCOL + "\r\n").encode()
            core.mark(session.environ, "%s:%s" % (PROG, test))
            session.log("mark", why)
        if verb == b"mail":
            return self.mail(session, cmd)
        if verb == b"rcpt":
            return self.rcpt(session, cmd)
        if verb in (b"rset", b"helo", b"ehlo"):
            self.pending, self.staged, self.in_message = None, None, 0
        return None

    def reply(self, session, verb, lines):
        self.protocol.reply(verb)
        if verb == b"mail":
            if lines[0][:1] == b"2":  # a new transaction: its own refusal, no recipients yet
                self.pending, self.in_message = self.staged, 0
            self.staged = None
        return None

    def mail(self, session, cmd):
        self.staged = None
        address = cmd.path
        if address is None:
            return None  # qmail-smtpd refuses it itself
        config = self.config
        helo = None if session.helo is None else text(session.helo)
        if config.refusal is not None:
            verdict = core.Verdict(config.refusal.action, config.refusal.code, config.refusal.text,
                                   (("from", text(address)),) + config.refusal.why)
        else:
            whitelisted = core.trusted(session.environ)
            verdict = decide(text(address), helo, session.client, config, self.asker(),
                             self.clock(), whitelisted)
        if verdict.action == "refuse":
            session.log(verdict.reply, verdict.why)
            if not config.exempt:
                return (verdict.reply + "\r\n").encode("ascii", "replace")
            self.staged = verdict  # said to each recipient not exempt
            self.received_spf(session, verdict, address, helo)
            return None
        self.received_spf(session, verdict, address, helo)
        if verdict.action == "mark":
            for tag in dict(verdict.why)["tags"].split(","):
                core.mark(session.environ, tag)
        session.log(verdict.action, verdict.why)
        return None

    def received_spf(self, session, verdict, address, helo):
        """Add the Received-SPF field of the SPF result decide() computed, if it did."""
        result = dict(verdict.why).get("spf")
        if result is not None:
            from qtools.spf import received

            session.add_header("Received-SPF", *received(result, text(address), helo,
                                                          session.client.ip, self.config.receiver))

    def rcpt(self, session, cmd):
        config = self.config
        address = cmd.path
        shown = text(address if address is not None else cmd.line)
        if self.pending is not None:
            entry = core.exempt_entry(shown, config.exempt) if address is not None else None
            if entry is None:
                return (self.pending.reply + "\r\n").encode("ascii", "replace")
            session.log("pass", (("rcpt", shown), ("why", "exempt"), ("entry", entry)))
        for count, cap, why in ((self.in_message, config.max_rcpt, "maxrcpt"),
                                (self.in_connection, config.max_rcpt_conn, "maxrcptconn")):
            if cap and count >= cap:
                session.log(TOO_MANY, (("rcpt", shown), ("why", why), ("count", count)))
                return (TOO_MANY + "\r\n").encode()
        self.in_message += 1
        self.in_connection += 1
        return None
