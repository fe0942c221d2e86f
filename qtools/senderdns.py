# SPDX-License-Identifier: ISC
"""What DNS says about an envelope sender's domain, for mfcheck: mail exchangers, RHSBL.

Every question about one MAIL FROM goes out in one batch (qtools.resolver),
under one time limit for the whole command.
"""

import time

from qtools import core


def questions(domain, mx, lists):
    """Return the questions asked at once about a sender domain: MX, A, AAAA (if mx), RHSBL."""
    questions = [(domain, "MX"), (domain, "A"), (domain, "AAAA")] if mx else []
    for base, _, _ in lists:
        questions += [("%s.%s" % (name, base), "A") for name in parents(domain)]
    return questions


def parents(domain):
    """Return a domain and its parents, at most the five nearest the root, without the TLD."""
    labels = domain.split(".")
    return [".".join(labels[i:]) for i in range(len(labels) - 1)][-5:]


def mx_why(mx, a, aaaa):
    """Return why the domain cannot receive mail ("nodomain", "nullmx", "dnsfail"), or None."""
    if mx.error:
        return "dnsfail"
    if mx.records:
        return "nullmx" if all(name == "" for _, name in mx.records) else None
    if a.records or aaaa.records:
        return None
    return "dnsfail" if a.error or aaaa.error else "nodomain"


def rhsbl(lists, answers):
    """Return (score, listed bases, failed bases) from the RHSBL answers, list by list."""
    from qtools.resolver import listed

    per = len(answers) // len(lists)
    score, hits, failed = 0, [], []
    for n, (base, codes, weight) in enumerate(lists):
        got = answers[n * per : (n + 1) * per]
        if any(a.error for a in got):
            failed.append(base)
        elif listed(codes, [r for a in got for r in a.records]):
            score += weight
            hits.append(base)
    return score, hits, failed


def asker(environ, servers, timeout):
    """Return a function that gives ask(questions) with a fresh time limit for one command.

    A bad $QTOOLS_RESOLVER, $DNSCACHEIP or -S is a Die(100) here, before
    the client is greeted; resolv.conf is read only when a question is asked.
    """
    from qtools import resolver  # the resolver's API is used here only

    if servers:
        environ = dict(environ, QTOOLS_RESOLVER=servers)
    if environ.get("QTOOLS_RESOLVER") or environ.get("DNSCACHEIP"):
        try:
            resolver.servers(environ, resolv_conf="/dev/null")
        except ValueError as error:
            raise core.Die(core.USAGE_EXIT, "invalid resolver: %s" % core.clean(str(error)))
    bound = []

    def start():
        deadline = time.monotonic() + timeout

        def ask(questions):
            if not bound:
                bound.append(resolver.servers(environ))
            left = deadline - time.monotonic()
            if left <= 0:
                return [resolver.Answer(error="timeout") for _ in questions]
            return resolver.lookup(questions, bound[0], left)

        return ask

    return start
