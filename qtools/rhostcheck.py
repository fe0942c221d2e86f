# SPDX-License-Identifier: ISC
"""rhostcheck - refuse SMTP clients without a believable reverse DNS name."""

from qtools import core

PROG = "rhostcheck"
USAGE = (
    "rhostcheck [ -b | -B ] [ -c | -C ] [ -m | -M ] [ -h | -H ] [ -g | -G ]"
    " [ -k words ] [ -e encodings ] [ -x exceptions.cdb ] [ -t timeout ]"
    " [ -T dnstimeout ] [ -S ip[:port] ] prog [ arg ... ]"
)

# Replies.  X.7.25 is RFC 7372's "reverse DNS validation failed".
NORDNS = "bad reverse DNS: %s has no forward-confirmed name (#%d.7.25)"
DYNAMIC = "bad reverse DNS: %s looks dynamic, please use your provider's relay (#%d.7.1)"
TEMPORARY = "temporary reverse DNS lookup error (#4.4.3)"
LOCAL_ERROR = "temporary local list error (#4.3.0)"

DNS_TIMEOUT = 10.0
ENCODINGS = ("dotted", "dashed", "reversed", "padded", "hex", "integer")
KEYWORDS = (
    "dyn,dynamic,dynip,dial,dialup,dialin,dsl,adsl,vdsl,xdsl,sdsl,pool,dhcp,cable,"
    "ppp,pppoe,broadband,cust,customer,client,res,residential,home,user,mobile,"
    "wireless,ftth,catv,modem,nat,unassigned"
)


def _ipv4_patterns(octets, encodings):
    """Yield (encoding, regular expression) for an IPv4 address inside a name."""
    a = [str(o) for o in octets]
    padded = ["%03d" % o for o in octets]
    forms = {
        "dotted": [r"\.".join(a)],
        "dashed": ["[-_]".join(a)],
        "reversed": ["[-._]".join(reversed(a))],
        "padded": ["[-._]?".join(padded), "[-._]?".join(reversed(padded))],
        "integer": [str(int.from_bytes(bytes(octets), "big"))],
    }
    for name in encodings:
        for pattern in forms.get(name, ()):
            yield name, r"(?<![0-9])%s(?![0-9])" % pattern


def dynamic(host, packed, keywords=KEYWORDS.split(","), encodings=ENCODINGS):
    """Return why host looks like a generic name for address packed, or None."""
    import re

    host = host.lower()
    if "hex" in encodings:
        for digits in (packed.hex(), packed[::-1].hex()):
            if re.search(r"(?<![0-9a-f])%s(?![0-9a-f])" % digits, host):
                return "hex"
    if len(packed) == 4:
        for name, pattern in _ipv4_patterns(packed, encodings):
            if name != "integer" or int.from_bytes(packed, "big") >= 1 << 24:
                if re.search(pattern, host):
                    return name
    # Words in the labels before the domain itself: "dsl" in dsl-1.isp.example.
    words = set(re.split(r"[^a-z]+", ".".join(host.split(".")[:-2])))
    for word in keywords:
        if word and word in words:
            return "keyword:%s" % word
    return None


def confirm(client, resolve):
    """Look up PTR, then A/AAAA of each name; return (name or None, error or None)."""
    reverse = core.reverse_ip(client.packed)
    zone = "in-addr.arpa" if len(client.packed) == 4 else "ip6.arpa"
    (ptr,) = resolve([("%s.%s" % (reverse, zone), "PTR")])
    if ptr.error or not ptr.records:
        return None, ptr.error
    names = ptr.records[:5]
    rdtype = "A" if len(client.packed) == 4 else "AAAA"
    answers = resolve([(name, rdtype) for name in names])
    for name, answer in zip(names, answers):
        if any(core.parse_ip(a) == core.parse_ip(client.ip) for a in answer.records):
            return name, None
    failed = [a.error for a in answers if a.error]
    return None, failed[0] if failed else None


def decide(client, resolve=None, generic=False, keywords=None, encodings=ENCODINGS,
           exceptions=None, bounce=False, failclosed=False, ov=None):
    """Decide from TCPREMOTEHOST, or from our own lookups when resolve is given."""
    if exceptions is not None:
        from qtools import netlist
    if client.relay:
        return core.Verdict("pass", why=(("why", "relayclient"),))
    if ov is not None and ov.action == "skip":
        return core.Verdict("skip", why=(("why", "override"),))
    if ov is not None and ov.action == "refuse":
        return core.from_override(ov)
    host, why = client.host, []
    if exceptions is not None and netlist.lookup(exceptions, client.packed):
        return core.Verdict("pass", why=(("why", "exception"),))
    if resolve is not None:
        host, error = confirm(client, resolve)
        if error:
            why.append(("dnsfail", error))
            if failclosed:
                return core.Verdict("refuse", 451, TEMPORARY, why + [("why", "tempfail")])
            return core.Verdict("pass", why=why + [("why", "tempfail")])
    n = 5 if bounce else 4
    code = 553 if bounce else 451
    if host is None:
        return core.Verdict("refuse", code, NORDNS % (client.ip, n), why + [("why", "nordns")])
    why.append(("host", host))
    if exceptions is not None and netlist.lookup(exceptions, host=host):
        return core.Verdict("pass", why=why + [("why", "exception")])
    if generic:
        words = KEYWORDS.split(",") if keywords is None else keywords
        match = dynamic(host, client.packed, words, encodings)
        if match:
            why += [("why", "dynamic"), ("match", match)]
            return core.Verdict("refuse", code, DYNAMIC % (core.clean(host, 100), n), why)
    return core.Verdict("pass", why=why)


def _words(text):
    return [w.strip().lower() for w in text.split(",") if w.strip()]


@core.main_of(PROG, USAGE)
def main(argv, environ):
    """Run prog when the client has a forward-confirmed, non-generic name; refuse it otherwise."""
    options, rest = core.getopt(argv, "bBcCmMhHgGk:e:x:t:T:S:")
    timeout, dns_timeout, servers, options = core.dns_options(PROG, options, DNS_TIMEOUT)
    opt = dict.fromkeys("bcmhg", False)
    keywords, encodings, exceptions = None, list(ENCODINGS), None
    for letter, value in options:
        if letter.lower() in opt:
            opt[letter.lower()] = letter.islower()
        elif letter == "k":
            keywords = _words(value)
        elif letter == "e":
            encodings = _words(value)
        elif letter == "x":
            exceptions = value
    if not rest:
        raise core.Usage("")
    if any(e not in ENCODINGS for e in encodings):
        raise core.Usage("invalid encodings: %s" % ",".join(encodings))
    mark = core.flag(environ, "RHOSTCHECK_MARK", opt["m"])
    generic = core.flag(environ, "RHOSTCHECK_GENERIC", opt["g"])
    if environ.get("RHOSTCHECK_KEYWORDS") is not None:
        keywords = _words(environ["RHOSTCHECK_KEYWORDS"])
    if environ.get("RHOSTCHECK_ENCODINGS") is not None:
        encodings = [e for e in _words(environ["RHOSTCHECK_ENCODINGS"]) if e in ENCODINGS]
    client = core.client(environ)
    # QTOOLS_RHOSTCHECK is the name the other programs' pattern gives;
    # RHOSTCHECK is read too when it is unset.
    ov = core.override(environ, "QTOOLS_RHOSTCHECK")
    if ov.action == "check":
        ov = core.override(environ, "RHOSTCHECK")
    resolve, reader, verdict = None, None, None
    if not client.relay and ov.action == "check":
        if exceptions is not None:
            from qtools import cdb

            reader = cdb.open_or_warn(exceptions, PROG)
            if reader is None and opt["c"]:
                why = (("why", "localfail"), ("file", exceptions))
                verdict = core.Verdict("refuse", 451, LOCAL_ERROR, why)
        # -b without a name from tcpserver: its own lookup may have failed
        # rather than found nothing, and a failure is never a 5xx.  Refuse
        # permanently only after our lookups confirmed there is no name.
        if opt["h"] or (opt["b"] and not mark and client.host is None):
            from qtools import resolver

            resolve = resolver.lazy(environ, servers, dns_timeout)
    if verdict is None:
        verdict = decide(client, resolve, generic, keywords, encodings, reader,
                         opt["b"], opt["c"], ov)
    fields = dict(verdict.why)
    if "dnsfail" in fields:
        core.warn(PROG, "unable to confirm the name of %s: %s" % (client.ip, fields["dnsfail"]))
    if resolve is not None and verdict.action == "pass" and "host" in fields:
        environ["TCPREMOTEHOST"] = fields["host"]  # now forward-confirmed
    if mark and verdict.action == "refuse" and fields.get("why") != "override":
        verdict = core.Verdict("mark", why=verdict.why)
    tag = "%s:%s" % (PROG, fields.get("why"))
    return core.act(PROG, verdict, client.ip, rest, environ, timeout=timeout, tag=tag)
