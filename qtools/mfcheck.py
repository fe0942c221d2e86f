# SPDX-License-Identifier: ISC
"""mfcheck: HELO and envelope-sender checks (DNS, patterns, RHSBL, SPF) and recipient caps."""

from qtools import core

PROG = "mfcheck"
USAGE = (
    "mfcheck [ -k tests ] [ -H tests ] [ -P tests ] [ -h helofile ] [ -b senderfile ] [ -N ]"
    " [ -l base[=codes][*weight] ] [ -s score ] [ -p level ] [ -r max ] [ -R max ]"
    " [ -e address ] [ -T dnstimeout ] [ -S ip[:port] ] prog..."
)
OVERRIDE = "QTOOLS_MFCHECK"

# SMTP replies.
HELO_REFUSED = {
    "literal": "550 sorry, your HELO is an address that is not yours (#5.7.1)",
    "fqdn": "550 sorry, your HELO is not a fully qualified domain name (#5.5.2)",
    "self": "550 sorry, your HELO is my own name (#5.7.1)",
    "pattern": "550 sorry, your HELO name is not welcome here (#5.7.1)",
}
NO_DOMAIN = "553 sorry, your envelope sender domain must exist (#5.1.8)"
NULL_MX = "550 sorry, your envelope sender domain does not accept mail (#5.7.27)"
DNS_FAIL = "451 unable to look up your envelope sender domain, try again later (#4.4.3)"
BADMAILFROM = "553 sorry, your envelope sender is in my badmailfrom list (#5.7.1)"
RHSBL = "553 sorry, your envelope sender domain %s is listed by %s (#5.7.1)"
SPF_REFUSED = "550 sorry, SPF says %s for %s from %s (#5.7.23)"
SPF_EXPLAINED = "550 %s (#5.7.23)"
SPF_PERMERROR = "550 sorry, the SPF record of %s is broken (#5.7.24)"
SPF_TEMP = "451 temporary SPF error for %s, try again later (#4.7.24)"
TOO_MANY = "452 too many recipients (#4.5.3)"
PROTOCOL = "421 SMTP protocol violation, closing connection (#4.5.0)"

TESTS = ("helo", "dns", "pattern", "rhsbl", "spf")
EXEMPT = core.EXEMPT
DNS_TIMEOUT = 10.0
# SPFBEHAVIOR level from which each result refuses (the qmail-spf patch's levels).
SPF_LEVELS = {"temperror": 2, "fail": 3, "softfail": 4, "neutral": 5, "none": 6, "permerror": 6}


class Config:
    """The options and variables of one connection, with their defaults."""

    def __init__(self):
        from qtools.helocheck import PROTOCOL_TESTS, TESTS as HELO_TESTS

        self.helo = set(HELO_TESTS)
        self.protocol = set(PROTOCOL_TESTS)
        self.protocol_refuse = set()  # the protocol tests that refuse instead of marking
        self.helo_patterns = self.patterns = None
        self.files = (None, None)  # the HELO and sender pattern files, read once needed
        self.dns = True
        self.lists, self.threshold = [], 1
        self.spf = 0
        self.max_rcpt = self.max_rcpt_conn = 0
        self.exempt = EXEMPT.split()
        self.mark = set()
        self.own_names, self.own_ips = (), ()
        self.receiver = "unknown"
        self.timeout, self.servers = DNS_TIMEOUT, None
        self.refusal = None  # the override's fixed refusal


def spf_hit(result, explanation, domain, client, level):
    """Return the reply when SPF result refuses at level, else None."""
    if level < SPF_LEVELS.get(result, 99):
        return None
    domain = core.clean(domain)  # the client's words: they reach the reply
    if result == "temperror":
        return SPF_TEMP % domain
    if result == "permerror":
        return SPF_PERMERROR % domain
    if result == "fail" and explanation:
        return SPF_EXPLAINED % core.clean(explanation)
    return SPF_REFUSED % (result, domain, client.ip)


def decide(sender, helo, client, config, ask, now=0.0, whitelisted=False):
    """Return the Verdict on one MAIL FROM: sender and helo are text, ask(questions) the DNS."""
    from qtools import helocheck, senderdns
    from qtools.dnswire import valid_domain  # not spfrecord: SPF's code loads only for SPF

    fields = [("from", sender), ("helo", helo or "")]
    hits = []  # (test, reply, why fields)
    address = sender.lower()
    if config.patterns and address:
        entry = config.patterns.sender(address)
        if entry is not None:
            hits.append(("pattern", BADMAILFROM, [("why", "badmailfrom"), ("entry", entry)]))
    if not whitelisted:
        # No HELO at all is tested as an empty name: qmail-smtpd lets it pass.
        tests = config.helo if config.helo_patterns else config.helo - {"pattern"}
        found = helocheck.check(helo or "", client, tests, config.own_names, config.own_ips,
                                config.helo_patterns)
        if found is not None:
            hits.append(("helo", HELO_REFUSED[found[0]], [("why", "helo" + found[0])]))
    domain = address.rpartition("@")[2] if "@" in address else ""
    literal = domain.startswith("[")  # an address literal: nothing to ask
    if address and not (literal or whitelisted or valid_domain(domain)):
        hits.append(("dns", NO_DOMAIN, [("why", "nodomain")]))
    # No DNS question once the answer is a permanent refusal anyway.
    settled = whitelisted or any(t not in config.mark and r[:1] == "5" for t, r, _ in hits)
    about_domain, about_spf = [], []
    if address and not (literal or settled) and valid_domain(domain):
        about_domain = senderdns.questions(domain, config.dns, config.lists)
    spf_domain = domain if address else (helo or "").strip().lower()
    if config.spf and not (settled or spf_domain.startswith("[")) and valid_domain(spf_domain):
        about_spf = [(spf_domain, "TXT")]
    # One batch: the MX check, the RHSBL and the SPF record are asked at once.
    answers = ask(about_domain + about_spf) if about_domain or about_spf else []
    if about_domain and config.dns:
        why = senderdns.mx_why(*answers[:3])
        if why is not None:
            hits.append(("dns", {"nodomain": NO_DOMAIN, "nullmx": NULL_MX}.get(why, DNS_FAIL),
                         [("why", why)]))
    if about_domain and config.lists:
        first = 3 if config.dns else 0
        score, listed, failed = senderdns.rhsbl(config.lists, answers[first : len(about_domain)])
        fields += [("rhsblfail", ",".join(failed))] if failed else []
        if listed:
            fields += [("score", score), ("hits", ",".join(listed))]
        if listed and score >= config.threshold:
            hits.append(("rhsbl", RHSBL % (core.clean(domain), ", ".join(listed)),
                         [("why", "rhsbl"), ("list", ",".join(listed))]))
    if about_spf:
        from qtools import spf

        identity = sender if address else "postmaster@" + spf_domain
        # The batch's answers (TXT, MX, A, AAAA) serve the record's a and mx too.
        cache = dict(zip(about_domain + about_spf, answers))
        checker = spf.Checker(ask, client.packed, identity, helo or "unknown", config.receiver,
                              cache, now)
        result, explanation = checker.check(spf_domain)
        fields.append(("spf", result))
        reply = spf_hit(result, explanation, spf_domain, client, config.spf)
        if reply is not None:
            hits.append(("spf", reply, [("why", "spf")]))
    return combine(hits, fields, config.mark)


def combine(hits, fields, mark):
    """Return the Verdict of the tests that hit: a 5xx first, then a 4xx, then marks."""
    refusing = [h for h in hits if h[0] not in mark]
    refusing.sort(key=lambda h: h[1][:1] != "5")
    if refusing:
        test, reply, why = refusing[0]
        return core.Verdict("refuse", int(reply[:3]), reply[4:], fields + why)
    if hits:
        tests = ",".join(h[0] for h in hits)
        tags = ",".join("%s:%s" % (PROG, h[0]) for h in hits)
        return core.Verdict("mark", why=fields + [("why", tests), ("tags", tags)])
    return core.Verdict("pass", why=fields)


# The options a variable set per client replaces.
VARIABLES = (("k", "MFCHECK_MARK"), ("H", "MFCHECK_HELO"), ("P", "MFCHECK_PROTOCOL"),
             ("h", "MFCHECK_BADHELO"), ("b", "MFCHECK_BADMAILFROM"), ("s", "MFCHECK_THRESHOLD"),
             ("p", "SPFBEHAVIOR"), ("r", "MFCHECK_MAXRCPT"), ("R", "MFCHECK_MAXRCPTCONN"),
             ("T", "MFCHECK_TIMEOUT"))


def names(text, allowed, where):
    """Return the set of test names in a comma list ("all" for every one), or raise Die."""
    found = {n.strip() for n in text.replace(",", " ").split()}
    if "all" in found:
        return set(allowed)
    bad = sorted(found - set(allowed) - {"none"})
    if bad:
        raise core.Die(core.USAGE_EXIT, "invalid %s: unknown test %s" % (where, core.clean(bad[0])))
    return found - {"none"}


def whole(text, where, low=0, high=None):
    """Return text as a whole number from low to high, or raise Die naming where."""
    try:
        value = int(text, 10)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        raise core.Die(core.USAGE_EXIT, "invalid %s: %s" % (where, core.clean(text)))
    return value


def parse(argv, environ):
    """Return (Config, rest of argv); variables set per client override the options."""
    from qtools import helocheck, resolver

    options, rest = core.getopt(argv, "k:H:P:h:b:Nl:s:p:r:R:e:T:S:")
    if not rest:
        raise core.Usage()
    config, values, exempts, lists = Config(), {}, None, []
    for letter, value in options:
        if letter == "e":
            exempts = (exempts or []) + [value]
        elif letter == "l":
            lists.append(value)
        else:
            values[letter] = value
    for letter, name in VARIABLES:
        if name in environ:
            values[letter] = environ[name]
    if "MFCHECK_RHSBL" in environ:
        lists = environ["MFCHECK_RHSBL"].split()
    # Each value names the option or variable it came from when it is wrong.
    where = {letter: "$" + name if name in environ else "-" + letter for letter, name in VARIABLES}
    config.mark = names(values.get("k", ""), TESTS, where["k"])
    if "P" in values:
        # pipelining,nonsmtp=refuse: a test named runs; =refuse makes it refuse.
        words = values["P"].replace(",", " ").split()
        refuse = [w[: -len("=refuse")] for w in words if w.endswith("=refuse")]
        marked = [w[: -len("=mark")] if w.endswith("=mark") else w
                  for w in words if not w.endswith("=refuse")]
        config.protocol = names(" ".join(marked + refuse), helocheck.PROTOCOL_TESTS, where["P"])
        config.protocol_refuse = set(refuse) & config.protocol
    config.helo = names(values.get("H", ",".join(helocheck.TESTS)), helocheck.TESTS, where["H"])
    config.threshold = whole(values.get("s", "1"), where["s"], -1000)
    config.spf = whole(values.get("p", "0"), where["p"], 0, 6)
    config.max_rcpt = whole(values.get("r", "0"), where["r"])
    config.max_rcpt_conn = whole(values.get("R", "0"), where["R"])
    for spec in lists:
        try:
            config.lists.append(resolver.parse_list(spec))
        except ValueError:
            raise core.Die(core.USAGE_EXIT, "invalid RHSBL list: %s" % core.clean(spec))
    if "T" in values:
        try:
            config.timeout = core.seconds(values["T"])
        except ValueError:
            raise core.Die(core.USAGE_EXIT, "invalid %s: %s" % (where["T"], core.clean(values["T"])))
    if "S" in values:
        config.servers = resolver.option_servers("S", values["S"])
    config.dns = "N" not in values and core.flag(environ, "MFCHECK_DNS", True)
    config.exempt = core.exemptions(exempts, environ)
    config.files = values.get("h"), values.get("b")
    return config, rest


@core.main_of(PROG, USAGE)
def main(argv, environ):
    """Judge HELO and MAIL FROM, cap recipients, then hand the connection on."""
    config, rest = parse(argv, environ)
    client = core.client(environ)
    wish = core.override(environ, OVERRIDE)
    if client.relay or wish.action == "skip":
        return core.chain(PROG, rest, environ)
    if wish.action == "refuse":
        config.refusal = core.from_override(wish)
    elif config.files != (None, None):  # no list, no patterns module loaded
        from qtools import patterns

        helo_file, sender_file = config.files
        config.helo_patterns = patterns.load(helo_file, PROG) if helo_file else None
        config.patterns = patterns.load(sender_file, PROG) if sender_file else None
    from qtools import mailcheck, proxy, senderdns

    ask = senderdns.asker(environ, config.servers, config.timeout)
    own = environ.get("QTOOLS_HOSTNAME") or environ.get("TCPLOCALHOST") or ""
    config.own_names = {n.lower().rstrip(".") for n in own.split()}
    config.receiver = own.split()[0] if own.split() else "unknown"
    local = core.parse_ip(environ.get("TCPLOCALIP", ""))
    config.own_ips = {local[1]} if local else set()
    return proxy.add_filter(PROG, mailcheck.MailCheck(config, ask), rest, environ)
