# SPDX-License-Identifier: ISC
"""rblcheck - refuse SMTP clients listed in DNS blocklists, a drop-in for rblsmtpd."""

from qtools import core

PROG = "rblcheck"
USAGE = (
    "rblcheck [ -b | -B ] [ -c | -C ] [ -m | -M ] [ -n ] [ -t timeout ]"
    " [ -T dnstimeout ] [ -S ip[:port] ] [ -s score ] [ -w score ]"
    " [ -A allow.cdb ] [ -D deny.cdb ]"
    " [ -r base ] [ -a base ] [ -l base[=codes][*weight] ]"
    " [ -d base[=codes][*weight] ] prog [ arg ... ]"
)

# Replies.  A -r list's TXT text is the reply, and TEMPORARY is rblsmtpd's
# own wording: both stay word for word so rblcheck can replace rblsmtpd.
TEMPORARY = "temporary RBL lookup error"
LISTED = "your address %s is listed by %s (#%d.7.1)"
NAME_LISTED = "your host name %s is listed by %s (#%d.7.1)"
DENIED = "your address %s is in my deny list (#%d.7.1)"
LOCAL_ERROR = "temporary local list error (#4.3.0)"

DNS_TIMEOUT = 10.0


class Source:
    """One list from the command line, with the -b/-c flags in force where it stood."""

    def __init__(self, kind, spec, bounce=False, failclosed=False):
        self.kind, self.bounce, self.failclosed = kind, bounce, failclosed
        self.base, self.codes, self.weight = spec, None, 1
        if kind in "ld":
            from qtools.resolver import parse_list

            self.base, self.codes, self.weight = parse_list(spec)

    def names(self, client):
        """Return the (name, type) questions this list asks about client."""
        if self.kind == "d":
            host = client.host or ""
            if "\\" in host or host.count(".") < 1:
                return []  # no name, or tcpserver escaped a strange byte
            labels = host.rstrip(".").split(".")
            # The name and its parents, but at most the five nearest the root,
            # where the registered domain is.
            domains = [".".join(labels[i:]) for i in range(len(labels) - 1)][-5:]
            return [("%s.%s" % (d, self.base), "A") for d in domains]
        name = "%s.%s" % (core.reverse_ip(client.packed), self.base)
        return [(name, "TXT" if self.kind == "r" else "A")]


def _refusal(code_bounce, mustnotbounce, text, why):
    code = 553 if code_bounce and not mustnotbounce else 451
    return core.Verdict("refuse", code, text, why)


def decide(client, sources, resolve, threshold=1, ov=None, allow=None, deny=None, deny_bounce=False):
    """Decide as rblsmtpd does, in argv order, from answers asked all at once."""
    # resolve([(name, type)]) returns one resolver.Answer per question;
    # allow and deny are opened network-list cdbs or None.
    if client.relay:
        return core.Verdict("pass", why=(("why", "relayclient"),))
    if ov is not None and ov.action == "skip":
        return core.Verdict("skip", why=(("why", "override"),))
    if ov is not None and ov.action == "refuse":
        return core.from_override(ov)
    if allow is not None or deny is not None:
        from qtools import netlist
    if allow is not None:
        hit = netlist.lookup(allow, client.packed, client.host)
        if hit:
            return core.Verdict("pass", why=(("why", "allow"), ("key", hit[0].decode())))
    if deny is not None:
        hit = netlist.lookup(deny, client.packed, client.host)
        if hit:
            text = core.clean(hit[1].decode("latin-1")) or DENIED % (client.ip, 5 if deny_bounce else 4)
            why = (("why", "deny"), ("key", hit[0].decode()))
            return _refusal(deny_bounce, False, text, why)
    if not sources:
        return core.Verdict("pass")
    from qtools.resolver import listed as resolver_listed

    questions = [s.names(client) for s in sources]
    flat = [q for qs in questions for q in qs]
    answers = iter(resolve(flat) if flat else [])
    why, hits, score, mustnotbounce, bounce = [], [], 0, False, True
    for source, asked in zip(sources, questions):
        got = [next(answers) for _ in asked]
        failed = [a.error for a in got if a.error]
        if failed:
            why.append(("dnsfail", "%s:%s" % (source.base, failed[0])))
            mustnotbounce = True
            if source.kind == "a":
                if not source.failclosed:  # rblsmtpd: a failed -a lookup accepts
                    return core.Verdict("pass", why=why + [("why", "antifail")])
                continue
            if source.failclosed:
                why += [("why", "tempfail"), ("list", source.base)]
                return core.Verdict("refuse", 451, TEMPORARY, why)
            continue
        records = [r for a in got for r in a.records]
        if source.kind == "a" and records:
            return core.Verdict("pass", why=why + [("why", "antilisted"), ("list", source.base)])
        if source.kind == "r":
            text = core.clean(b"".join(records).decode("latin-1"))
            if text:
                why += [("why", "listed"), ("list", source.base)]
                return _refusal(source.bounce, mustnotbounce, text, why)
        elif source.kind in "ld" and resolver_listed(source.codes, records):
            score += source.weight
            hits.append(source)
            bounce = bounce and (source.bounce or source.weight <= 0)
    if hits:
        why += [("score", score), ("hits", ",".join(s.base for s in hits))]
    listed = [s for s in hits if s.weight > 0]
    if listed and score >= threshold:
        names = ", ".join(s.base for s in listed)
        bounce = bounce and any(s.bounce for s in listed)
        n = 5 if bounce and not mustnotbounce else 4
        if all(s.kind == "d" for s in listed):
            text = NAME_LISTED % (client.host, names, n)
        else:
            text = LISTED % (client.ip, names, n)
        why += [("why", "score"), ("list", ",".join(s.base for s in listed))]
        return _refusal(bounce, mustnotbounce, text, why)
    return core.Verdict("pass", why=why)


def _variable(environ, name, parse, default):
    text = environ.get(name)
    if not text:
        return default
    try:
        return parse(text)
    except ValueError:
        raise core.Die(core.USAGE_EXIT, "invalid $%s: %s" % (name, core.clean(text)))


@core.main_of(PROG, USAGE)
def main(argv, environ):
    """Run prog unless the client is listed; refuse it with the list's text otherwise."""
    options, rest = core.getopt(argv, "bBcCmMnt:T:S:s:w:A:D:r:a:l:d:")
    timeout, dns_timeout, servers, options = core.dns_options(PROG, options, DNS_TIMEOUT)
    bounce = failclosed = mark = dryrun = False
    threshold, trust = 1, None
    sources, cdbs = [], {}
    for letter, value in options:
        if letter in "bB":
            bounce = letter == "b"
        elif letter in "cC":
            failclosed = letter == "c"
        elif letter in "mM":
            mark = letter == "m"
        elif letter == "n":
            dryrun = True
        elif letter == "s":
            threshold = core.number(PROG, letter, value, low=-1000)
        elif letter == "w":
            trust = core.number(PROG, letter, value, low=-1000)
        elif letter in "AD":
            cdbs[letter] = (value, bounce, failclosed)
        else:
            try:
                sources.append(Source(letter, value, bounce, failclosed))
            except ValueError:
                raise core.Usage("invalid list for -%s: %s" % (letter, value))
    if not rest:
        raise core.Usage("")
    mark = core.flag(environ, "RBLCHECK_MARK", mark)
    dryrun = core.flag(environ, "RBLCHECK_DRYRUN", dryrun)
    threshold = _variable(environ, "RBLCHECK_THRESHOLD", int, threshold)
    trust = _variable(environ, "RBLCHECK_TRUST", int, trust)
    dns_timeout = _variable(environ, "RBLCHECK_TIMEOUT", core.seconds, dns_timeout)
    client = core.client(environ)
    ov = core.override(environ, "RBLSMTPD")
    if ov.action == "check":
        ov = core.override(environ, "QTOOLS_RBLCHECK")
    # rblsmtpd cuts and cleans bytes, not characters: count them alike.
    ov.text = ov.text.encode("utf-8", "surrogateescape").decode("latin-1")
    opened, verdict = {}, None
    if not client.relay and ov.action == "check":
        for letter, (path, _, list_failclosed) in cdbs.items():
            from qtools import cdb

            opened[letter] = cdb.open_or_warn(path, PROG)
            if opened[letter] is None and list_failclosed:
                why = (("why", "localfail"), ("file", path))
                verdict = core.Verdict("refuse", 451, LOCAL_ERROR, why)
    if verdict is None:
        # The resolver module is loaded only when a question is asked.
        def resolve(questions):
            from qtools import resolver

            return resolver.lazy(environ, servers, dns_timeout)(questions)

        deny_bounce = cdbs.get("D", (0, False))[1]
        verdict = decide(
            client, sources, resolve, threshold, ov, opened.get("A"), opened.get("D"), deny_bounce
        )
    for key, value in verdict.why:
        if key == "dnsfail":
            core.warn(PROG, "unable to look up %s in %s" % (client.ip, value.replace(":", ": ", 1)))
    fields = dict(verdict.why)
    tag = "%s:%s" % (PROG, fields.get("list") or fields.get("why"))
    # An allow-list hit, or a score at or below -w, trusts; a refusal never does.
    if verdict.action == "pass" and (fields.get("why") in ("allow", "antilisted") or (
            trust is not None and "score" in fields and fields["score"] <= trust)):
        trusted = "%s:%s" % (PROG, fields.get("list") or fields.get("hits") or fields["why"])
        core.trust(environ, trusted)
        verdict = core.Verdict("pass", why=verdict.why + (("trust", trusted),))
    if verdict.action == "refuse" and fields.get("why") != "override":
        if dryrun:
            core.log(PROG, client.ip, "dryrun", (("reply", verdict.reply),) + verdict.why)
            return core.chain(PROG, rest, environ)
        if mark:
            verdict = core.Verdict("mark", why=verdict.why)
    return core.act(PROG, verdict, client.ip, rest, environ, timeout=timeout, tag=tag)
