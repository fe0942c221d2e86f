# SPDX-License-Identifier: ISC
"""SPF (RFC 7208): check_host() on qtools' own resolver, standard library only.

pyspf, the well-kept library, needs dnspython, whose import alone costs
several times a whole connection's start-up; this is the same algorithm
over the resolver the other programs use.  ask(questions) takes
[(name, type)] and returns one resolver.Answer each, all asked at once.
"""

from qtools import core
from qtools.spfrecord import PermError, expand, parse, shorten, valid_domain, within

LOOKUP_LIMIT = 10  # section 4.6.4
VOID_LIMIT = 2
MX_LIMIT = 10
PTR_LIMIT = 10


# RFC 7208 section 9.1: the Received-SPF comment of each result.
COMMENTS = {
    "pass": "domain of %(who)s designates %(ip)s as permitted sender",
    "fail": "domain of %(who)s does not designate %(ip)s as permitted sender",
    "softfail": "domain of transitioning %(who)s does not designate %(ip)s as permitted sender",
    "neutral": "%(ip)s is neither permitted nor denied by domain of %(who)s",
    "none": "domain of %(who)s does not designate permitted sender hosts",
    "temperror": "error in processing during lookup of domain of %(who)s",
    "permerror": "permanent error in processing domain of %(who)s",
}
# RFC 5322 section 3.2.3: the characters of an atom.
ATEXT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~")


def value(text):
    """Return text (cleaned) as a key-value pair's value: a dot-atom, or else a quoted-string."""
    text = core.clean(text, 256)  # RFC 5321 section 4.5.3.1.3: a path has at most 256 octets
    if text and all(atom and ATEXT.issuperset(atom) for atom in text.split(".")):
        return text
    return '"%s"' % text.replace("\\", "\\\\").replace('"', '\\"')


def received(result, sender, helo, ip, receiver):
    """Return the parts of the Received-SPF field of one check_host() (RFC 7208 section 9.1).

    sender is the MAIL FROM address ("" for <>: the HELO name was checked),
    helo the HELO name or None, ip the client's address, receiver our name.
    """
    who = core.clean(sender or (helo or "").strip().lower(), 256)
    comment = "%s: %s" % (core.clean(receiver, 100), COMMENTS[result] % {"who": who, "ip": ip})
    for special in ("\\", "(", ")"):  # a comment's quoted-pairs (RFC 5322 section 3.2.2)
        comment = comment.replace(special, "\\" + special)
    parts = [result, "(%s)" % comment, "receiver=%s;" % value(receiver), "client-ip=%s;" % value(ip),
             "envelope-from=%s;" % value(sender)]
    if helo is not None:
        parts.append("helo=%s;" % value(helo))
    return parts + ["identity=%s;" % ("mailfrom" if sender else "helo")]


class TempError(Exception):
    """A DNS failure: temperror."""


class Checker:
    """One check_host() run: the counters, the cache and the macro values it shares."""

    def __init__(self, ask, ip, sender, helo, receiver="unknown", cache=None, now=0):
        self.ask, self.ip, self.helo, self.receiver, self.now = ask, ip, helo, receiver, now
        local, at, domain = sender.rpartition("@")
        self.sender = sender if local else "postmaster@" + domain
        self.cache = dict(cache or {})
        self.lookups = self.voids = 0

    def check(self, domain):
        """Return (result, explanation or None) for the sender's domain (RFC 7208 section 4)."""
        domain = domain.lower().rstrip(".")
        if not valid_domain(domain):
            return "none", None
        try:
            return self._check(domain)
        except PermError:
            return "permerror", None
        except TempError:
            return "temperror", None

    def query(self, questions, strict=True):
        """Return the records of each (name, type), from the cache or one batch.

        A failed question raises TempError, or gives no records unless strict.
        """
        missing = [q for q in questions if q not in self.cache]
        good = [q for q in missing if valid_domain(q[0])]
        for q in missing:
            if q not in good:
                from qtools.resolver import Answer

                self.cache[q] = Answer()
        if good:
            for q, answer in zip(good, self.ask(good)):
                self.cache[q] = answer
        out = []
        for q in questions:
            answer = self.cache[q]
            if answer.error and strict:
                raise TempError(answer.error)
            out.append([] if answer.error else answer.records)
        return out

    def count(self):
        """Count a term that asks DNS (section 4.6.4)."""
        self.lookups += 1
        if self.lookups > LOOKUP_LIMIT:
            raise PermError("more than %d DNS lookups" % LOOKUP_LIMIT)

    def counted(self, name, rdtype):
        """Ask one counted question: the lookup and the void limits."""
        self.count()
        (records,) = self.query([(name, rdtype)])
        if not records:
            self.voids += 1
            if self.voids > VOID_LIMIT:
                raise PermError("more than %d void lookups" % VOID_LIMIT)
        return records

    def record(self, domain):
        """Return the domain's one SPF record text, None without one; PermError for two."""
        (records,) = self.query([(domain, "TXT")])
        found = [r for r in records if r[:6].lower() == b"v=spf1" and r[6:7] in (b"", b" ")]
        if len(found) > 1:
            raise PermError("%d SPF records" % len(found))
        if not found:
            return None
        try:
            return found[0].decode("ascii")
        except UnicodeDecodeError:
            raise PermError("record not ASCII")

    def _check(self, domain):
        text = self.record(domain)
        if text is None:
            return "none", None
        directives, modifiers = parse(text)
        for result, mech, arg, four, six in directives:
            if getattr(self, "_" + mech)(domain, arg, four, six):
                if result == "fail" and "exp" in modifiers:
                    return result, self.explain(domain, modifiers["exp"])
                return result, None
        if "redirect" in modifiers:
            self.count()
            target = self.target(domain, modifiers["redirect"])
            if not valid_domain(target):
                raise PermError("bad redirect %s" % core.clean(target))
            result = self._check(target)
            if result[0] == "none":
                raise PermError("redirect to %s without a record" % core.clean(target))
            return result
        return "neutral", None

    def target(self, domain, spec):
        return shorten(expand(spec, lambda letter: self.macro(letter, domain)).lower().rstrip("."))

    def explain(self, domain, spec):
        """Return the exp= text expanded, or None on any trouble (section 6.2)."""
        try:
            name = self.target(domain, spec)
            (records,) = self.query([(name, "TXT")])
            if len(records) != 1:
                return None
            text = records[0].decode("ascii")
            return expand(text, lambda letter: self.macro(letter, domain), explanation=True)
        except (PermError, TempError, UnicodeDecodeError):
            return None

    def macro(self, letter, domain):
        """Return the value of macro letter (section 7.2)."""
        ip = self.ip
        if letter == "s":
            return self.sender
        if letter == "l":
            return self.sender.rpartition("@")[0]
        if letter == "o":
            return self.sender.rpartition("@")[2]
        if letter == "d":
            return domain
        if letter == "i":
            return ".".join(str(b) for b in ip) if len(ip) == 4 else ".".join(ip.hex())
        if letter == "v":
            return "in-addr" if len(ip) == 4 else "ip6"
        if letter == "h":
            return self.helo
        if letter == "c":
            return core.format_ip(ip)
        if letter == "r":
            return self.receiver
        if letter == "t":
            return str(int(self.now))
        names = self.validated()  # "p"
        good = [n for n in names if n == domain or n.endswith("." + domain)]
        return (good or names or ["unknown"])[0]

    def addresses(self, names, strict=True):
        """Return the addresses of names in the client's family, asked in one batch."""
        rdtype = "A" if len(self.ip) == 4 else "AAAA"
        return self.query([(name, rdtype) for name in names], strict)

    def matches(self, records, bits):
        import _socket

        family = _socket.AF_INET if len(self.ip) == 4 else _socket.AF_INET6
        return any(within(self.ip, _socket.inet_pton(family, r), bits) for r in records)

    def _all(self, domain, arg, four, six):
        return True

    def _include(self, domain, arg, four, six):
        target = self.target(domain, arg)
        self.count()
        result = self._check(target) if valid_domain(target) else ("none", None)
        if result[0] == "none":
            raise PermError("include of %s without a record" % core.clean(target))
        return result[0] == "pass"

    def _a(self, domain, arg, four, six):
        name = self.target(domain, arg) if arg else domain
        records = self.counted(name, "A" if len(self.ip) == 4 else "AAAA")
        return self.matches(records, four if len(self.ip) == 4 else six)

    def _mx(self, domain, arg, four, six):
        name = self.target(domain, arg) if arg else domain
        exchanges = [n for _, n in self.counted(name, "MX")]
        if len(exchanges) > MX_LIMIT:
            raise PermError("more than %d MX records" % MX_LIMIT)
        names = [n for n in exchanges if n]
        bits = four if len(self.ip) == 4 else six
        return any(self.matches(records, bits) for records in self.addresses(names))

    def validated(self):
        """Return the client's validated names (section 5.5): PTR names that lead back to it."""
        rdtype = "in-addr.arpa" if len(self.ip) == 4 else "ip6.arpa"
        names = self.query([("%s.%s" % (core.reverse_ip(self.ip), rdtype), "PTR")], strict=False)[0]
        names = names[:PTR_LIMIT]
        found = self.addresses(names, strict=False)
        return [n for n, records in zip(names, found) if self.matches(records, len(self.ip) * 8)]

    def _ptr(self, domain, arg, four, six):
        self.count()
        target = self.target(domain, arg) if arg else domain
        return any(n == target or n.endswith("." + target) for n in self.validated())

    def _ip4(self, domain, arg, four, six):
        return within(self.ip, *arg)

    _ip6 = _ip4

    def _exists(self, domain, arg, four, six):
        return bool(self.counted(self.target(domain, arg), "A"))
