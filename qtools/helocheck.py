# SPDX-License-Identifier: ISC
"""The HELO/EHLO tests of mfcheck: address literals, FQDN syntax, our own name, a pattern list;
and the protocol tests of the greeting phase (postscreen's deep tests)."""

from qtools import core

TESTS = ("literal", "fqdn", "self", "pattern")
PROTOCOL_TESTS = ("pipelining", "nonsmtp", "barelf")
# Verbs of other protocols, sent by open-proxy scanners and misdirected clients.
NON_SMTP = frozenset((b"connect", b"get", b"post", b"head", b"put", b"user", b"pass"))


def literal(name):
    """Return (packed address, bracketed) when name is an address, bare or [in brackets]; else None."""
    bracketed = name.startswith("[") and name.endswith("]")
    text = name[1:-1] if bracketed else name
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    elif ":" in text and bracketed:
        return None  # RFC 5321 writes a v6 literal [IPv6:...]
    parsed = core.parse_ip(text)
    return None if parsed is None else (parsed[1], bracketed)


def is_fqdn(name):
    """Return True for a host name with at least two labels and a top label not all digits."""
    labels = (name[:-1] if name.endswith(".") else name).split(".")
    if len(labels) < 2 or len(name) > 253 or labels[-1].isdigit():
        return False
    for label in labels:
        if not 0 < len(label) < 64 or label[0] == "-" or label[-1] == "-":
            return False
        if not all("a" <= c <= "z" or "0" <= c <= "9" or c == "-" for c in label):
            return False
    return True


def check(helo, client, tests, own_names=(), own_ips=(), patterns=None):
    """Return (test, detail) of the first test the lowercased HELO name fails, or None.

    A literal of the client's own address is good HELO syntax; a bare one
    is not a name, so the fqdn test catches it.
    """
    name = helo.strip().lower()
    found = literal(name)
    if "self" in tests and (name.rstrip(".") in own_names or (found and found[0] in own_ips)):
        return "self", name
    if found is not None:
        if "literal" in tests and found[0] != client.packed:
            return "literal", name
        if found[1]:
            return None
    if "fqdn" in tests and not is_fqdn(name):
        return "fqdn", name
    if "pattern" in tests and patterns:
        entry = patterns.helo(name)
        if entry is not None:
            return "pattern", entry
    return None


class Protocol:
    """Watch the client's commands for what no SMTP client does; one verdict per test and connection.

    pipelining: a command sent before the reply to the greeting or to
    HELO/EHLO reached us (so before the client could have read it; EHLO's
    PIPELINING holds only after that reply).  nonsmtp: an HTTP or POP verb.
    barelf: a command ended by a LF without CR (postscreen's bare_newline).
    """

    def __init__(self, tests):
        self.tests = set(tests)
        self.awaiting = b"greeting"  # the reply the client must wait for, or None
        self.found = set()

    def command(self, verb, barelf=False):
        """Return [(test, detail)] of the violations this command shows first in the connection."""
        hits = []
        if verb in NON_SMTP and "nonsmtp" in self.tests:
            hits.append(("nonsmtp", verb.decode("latin-1")))
        elif self.awaiting is not None and "pipelining" in self.tests:
            hits.append(("pipelining", self.awaiting.decode()))
        if barelf and "barelf" in self.tests:
            hits.append(("barelf", verb.decode("latin-1")))
        if verb in (b"helo", b"ehlo"):
            self.awaiting = verb
        hits = [hit for hit in hits if hit[0] not in self.found]
        self.found.update(hit[0] for hit in hits)
        return hits

    def reply(self, verb):
        if verb in (b"", b"helo", b"ehlo"):
            self.awaiting = None
