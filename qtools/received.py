# SPDX-License-Identifier: ISC
"""The trace line the proxy adds to a message that came in over TLS.

The proxy ends TLS itself, so the next program (qmail-smtpd) sees plain
SMTP and writes "with SMTP" in its Received line.  The hop from the client
to the proxy is told in a Received line of its own, put first in the
message data on the backend's 354; qmail-smtpd then adds its line above
it, so the header reads hop by hop, top down:

    Received: (qmail 4711 invoked from network); ...
    Received: from mx.client.example (HELO mx.client.example) ([192.0.2.7])
      by mx.example.com (qtools) with ESMTPS; 30 Nov 2026 10:05:52 -0000
"""

import time

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def date(seconds=None):
    """Return the time as qmail writes it in a Received line: "30 Nov 2026 10:05:52 -0000"."""
    t = time.gmtime(seconds)
    return "%d %s %d %02d:%02d:%02d -0000" % (t.tm_mday, MONTHS[t.tm_mon - 1], t.tm_year,
                                              t.tm_hour, t.tm_min, t.tm_sec)


def tls_line(session, seconds=None):
    """Return the Received line (bytes, CR LF folded and ended) for a message sent over TLS."""
    from qtools.core import clean

    environ, client = session.environ, session.client
    helo = clean(session.helo.decode("latin-1"), 100) if session.helo else ""
    host = clean(client.host or "unknown", 100)
    by = clean(environ.get("QTOOLS_HOSTNAME") or environ.get("TCPLOCALHOST") or "localhost", 100)
    text = "Received: from %s%s ([%s])\r\n  by %s (qtools) with ESMTPS; %s\r\n" % (
        host, " (HELO %s)" % helo if helo else "", client.ip, by, date(seconds))
    return text.encode("ascii")
