# SPDX-License-Identifier: ISC
"""The header fields the proxy writes at the top of a message.

field() builds every one of them: outside text passes core.clean, lines
are folded to RFC 5322's 78 characters where they can be, and each field
ends in CR LF.  Filters add fields through Session.add_header(); the
engine writes them to the next program right after its 354, before any
byte of the client's message.

The proxy ends TLS itself, so the next program (qmail-smtpd) sees plain
SMTP and writes "with SMTP" in its Received line.  The hop from the client
to the proxy is told in a Received line of its own, the last of the fields
the proxy writes; qmail-smtpd then adds its line above them, so the header
reads hop by hop, top down:

    Received: (qmail 4711 invoked from network); ...
    Received-SPF: pass (mx.example.com: domain of a@client.example ...
    Received: from mx.client.example (HELO mx.client.example) ([192.0.2.7])
      by mx.example.com (qtools) with ESMTPS; 30 Nov 2026 10:05:52 -0000
"""

import time

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
LINE = 78  # RFC 5322 section 2.1.1: a line should have at most 78 characters
PART = 900  # characters of one part: no line comes near the limit of 998
NAME = 76  # characters of a field name


def date(seconds=None):
    """Return the time as qmail writes it in a Received line: "30 Nov 2026 10:05:52 -0000"."""
    t = time.gmtime(seconds)
    return "%d %s %d %02d:%02d:%02d -0000" % (t.tm_mday, MONTHS[t.tm_mon - 1], t.tm_year,
                                              t.tm_hour, t.tm_min, t.tm_sec)


def field(name, *parts):
    """Return the header field "name: part part ..." as bytes, folded and ended by CR LF.

    name is ours (printable ASCII without ":", else ValueError); each part
    is text from anywhere: cleaned (core.clean, PART characters at most),
    its runs of spaces made one.  A part that does not fit on the line but
    fits on a line of its own starts the next one, indented by two spaces
    as qmail folds (the parts meet where white space may grow); a part
    longer than a line is folded at its own spaces without adding any, so
    that unfolding gives it back.
    """
    from qtools.core import clean

    if not 0 < len(name) <= NAME or any(not "!" <= c <= "~" or c == ":" for c in name):
        raise ValueError("bad header field name: %r" % (name,))
    out = [name, ":"]
    width = len(name) + 1
    alone = True  # nothing but the name on the line yet
    for part in parts:
        words = clean(part, PART).split()
        if not words:
            continue
        need = len(words) + sum(map(len, words))
        if not alone and width + need > LINE and 1 + need <= LINE:
            out.append("\r\n ")
            width = 1
        for i, word in enumerate(words):
            if i and width + 1 + len(word) > LINE:
                out.append("\r\n")
                width = 0
            out.append(" " + word)
            width += 1 + len(word)
        alone = False
    out.append("\r\n")
    return "".join(out).encode("ascii")


def tls_line(session, seconds=None):
    """Return the Received line (bytes, folded, CR LF) for a message sent over TLS."""
    from qtools.core import clean

    environ, client = session.environ, session.client
    helo = clean(session.helo.decode("latin-1"), 100) if session.helo else ""
    host = clean(client.host or "unknown", 100)
    by = clean(environ.get("QTOOLS_HOSTNAME") or environ.get("TCPLOCALHOST") or "localhost", 100)
    return field("Received", "from %s%s ([%s])" % (host, " (HELO %s)" % helo if helo else "", client.ip),
                 "by %s (qtools) with ESMTPS;" % by, date(seconds))
