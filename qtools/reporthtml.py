# SPDX-License-Identifier: ISC
"""qtools-report -H: one self-contained HTML page, the tables and SVG charts drawn here.

No script, no font, no image from elsewhere: the page reads the same
offline, in a mail client or with JavaScript turned off.  The charts are
inline SVG made from the counts; each bar has a <title> that a browser
shows on hover.
"""

import html

from qtools import reporttext

ACCEPTED = "#3a9d5d"
# Fixed colours for the programs we know, in the order of the chain; others
# take the spare ones by name, so a program keeps its colour between reports.
COLOURS = {"tcpserver": "#6c757d", "throttle": "#8c564b", "rhostcheck": "#e377c2",
           "rblcheck": "#d62728", "greylist": "#f2a541", "mfcheck": "#9467bd",
           "validrcptto": "#1f77b4", "tarpit": "#17becf", "qtools-queue": "#7f3c8d"}
SPARE = ("#bcbd22", "#ff7f0e", "#2ca02c", "#aec7e8", "#98df8a", "#c5b0d5", "#c49c94")
LINES = {"tag": "#e0a800", "quarantine": "#e8590c", "reject": "#c92a2a"}

STYLE = """
body{font:14px/1.45 -apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;color:#1d2430;
background:#f4f6f9;margin:0}
main{max-width:1080px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 2px}h2{font-size:16px;margin:0 0 10px}
.sub{color:#5a6472;margin:0 0 18px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin-bottom:18px}
.card{background:#fff;border-radius:8px;padding:12px 16px;min-width:130px;box-shadow:0 1px 2px #0002}
.card b{display:block;font-size:24px}.card span{color:#5a6472;font-size:12px}
section{background:#fff;border-radius:8px;padding:16px 18px;margin-bottom:16px;box-shadow:0 1px 2px #0002}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:16px}.grid section{margin:0}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:3px 8px;border-bottom:1px solid #e6e9ee;text-align:left;white-space:nowrap}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
th{color:#5a6472;font-weight:600}.note{color:#5a6472;font-size:12px;margin:6px 0 0}
.scroll{overflow-x:auto}svg{display:block;max-width:100%;height:auto}
svg text{font:11px "DejaVu Sans",Arial,sans-serif;fill:#3d4654}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12px;margin:6px 0 0}
.legend i{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:5px;vertical-align:-1px}
"""


def colour(prog, taken):
    """Return a program's colour: its own, else a spare one picked by its name."""
    if prog in COLOURS:
        return COLOURS[prog]
    if prog not in taken:
        taken[prog] = SPARE[sum(prog.encode()) % len(SPARE)]
    return taken[prog]


def esc(value):
    return html.escape(str(value), quote=True)


def scale(value):
    """Return (top, step) of an axis reaching value: at most five steps of 1, 2 or 5 times a power of ten."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if value <= 5 * step * factor:
                tick = step * factor
                return max(-(-value // tick), 1) * tick, tick
        step *= 10


def _axis(width, left, top, plot_h, peak, tick):
    """Return the y grid lines and labels of a chart whose top is peak."""
    out = []
    value = 0
    while value <= peak:
        y = top + plot_h - plot_h * value / peak
        out.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#e6e9ee"/>' % (left, width - 10, y, y))
        out.append('<text x="%d" y="%.1f" text-anchor="end">%d</text>' % (left - 6, y + 4, value))
        value += tick
    return out


def svg(width, height, label, body):
    return ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 %d %d" width="%d" height="%d" role="img" '
            'aria-label="%s">%s</svg>' % (width, height, width, height, esc(label), "".join(body)))


def hours_chart(data, taken):
    """Stacked bars per hour: accepted, then the refusals of each program; connections as a line."""
    hours = data["hours"]
    progs = reporttext.programs_of(data)
    width, height, left, top, bottom = 1000, 300, 48, 14, 40
    plot_w, plot_h = width - left - 10, height - top - bottom
    peak, tick = scale(max([h["accepted"] + sum(h["refused"].values()) for h in hours]
                           + [h["connections"] for h in hours] + [1]))
    body = _axis(width, left, top, plot_h, peak, tick)
    slot = plot_w / max(len(hours), 1)
    every = max(1, int(len(hours) / 12 + 0.999))
    points = []
    for index, hour in enumerate(hours):
        x = left + index * slot
        y = top + plot_h
        parts = [("accepted", hour["accepted"], ACCEPTED)]
        parts += [(prog, hour["refused"].get(prog, 0), colour(prog, taken)) for prog in progs]
        for name, count, fill in parts:
            if not count:
                continue
            h = plot_h * count / peak
            y -= h
            body.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s %s: %d</title>'
                        '</rect>' % (x + slot * 0.12, y, slot * 0.76, h, fill,
                                     esc(reporttext.when(hour["hour"])), esc(name), count))
        points.append("%.1f,%.1f" % (x + slot / 2, top + plot_h - plot_h * hour["connections"] / peak))
        if index % every == 0:
            body.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>' % (
                x + slot / 2, top + plot_h + 16, esc(reporttext.when(hour["hour"])[11:16])))
            if index == 0 or reporttext.when(hour["hour"])[11:13] == "00":
                body.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>' % (
                    x + slot / 2, top + plot_h + 31, esc(reporttext.when(hour["hour"])[:10])))
    if points:
        body.append('<polyline points="%s" fill="none" stroke="#1d2430" stroke-width="1.5" '
                    'stroke-dasharray="4 3"><title>connections</title></polyline>' % " ".join(points))
    legend = [("accepted", ACCEPTED)] + [(p + " refused", colour(p, taken)) for p in progs]
    return svg(width, height, "accepted and refused per hour", body), legend + [("connections (dashed)", "#1d2430")]


def bars_chart(items, label, fill, width=480):
    """Horizontal bars: items is [(name, count, colour or None)]."""
    row, left = 22, 210
    height = max(len(items), 1) * row + 10
    peak = max([count for _, count, _ in items] + [1])
    body = []
    for index, (name, count, own) in enumerate(items):
        y = 5 + index * row
        w = (width - left - 60) * count / peak
        body.append('<text x="%d" y="%d" text-anchor="end">%s</text>' % (left - 8, y + 14, esc(name[:34])))
        body.append('<rect x="%d" y="%d" width="%.1f" height="15" rx="2" fill="%s"><title>%s: %d</title></rect>'
                    % (left, y + 2, max(w, 1), own or fill, esc(name), count))
        body.append('<text x="%.1f" y="%d">%d</text>' % (left + w + 6, y + 14, count))
    return svg(width, height, label, body)


def scores_chart(queue):
    """The spam score histogram, with the tag, quarantine and reject scores drawn as lines."""
    scores = {int(k): v for k, v in queue["scores"].items()}
    marks = {name: value for name, value in queue["thresholds"].items() if value is not None}
    low = min(list(scores) + [int(v // 1) for v in marks.values()] + [-5])
    high = max(list(scores) + [int(v // 1) + 1 for v in marks.values()] + [10]) + 1
    width, height, left, top, bottom = 480, 260, 40, 24, 34
    plot_w, plot_h = width - left - 10, height - top - bottom
    peak, tick = scale(max(list(scores.values()) + [1]))
    body = _axis(width, left, top, plot_h, peak, tick)
    slot = plot_w / (high - low)
    first_mark = min(marks.values()) if marks else None
    for score in range(low, high):
        count = scores.get(score, 0)
        x = left + (score - low) * slot
        if count:
            h = plot_h * count / peak
            fill = "#c0392b" if first_mark is not None and score >= first_mark else "#4a7fb5"
            body.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>score %d to %d: %d'
                        '</title></rect>' % (x + 0.5, top + plot_h - h, max(slot - 1, 0.5), h, fill,
                                             score, score + 1, count))
        if score % 5 == 0:
            body.append('<text x="%.1f" y="%d" text-anchor="middle">%d</text>' % (x, top + plot_h + 16, score))
    for index, (name, value) in enumerate(sorted(marks.items(), key=lambda item: item[1])):
        x = left + (value - low) * slot
        body.append('<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="%s" stroke-width="2" stroke-dasharray="5 3"/>'
                    % (x, x, top - 4, top + plot_h, LINES.get(name, "#333")))
        body.append('<text x="%.1f" y="%d" style="fill:%s" stroke="#fff" stroke-width="3" paint-order="stroke">'
                    '%s %s</text>' % (
            x + 4, top + 8 + 13 * index, LINES.get(name, "#333"), esc(name),
            esc("%g" % value)))
    body.append('<text x="%.1f" y="%d" text-anchor="middle">spam score</text>' % (left + plot_w / 2, height - 3))
    return svg(width, height, "spam score histogram", body)


def _table(table):
    if not table.rows:
        rows = ['<tr><td colspan="%d">none</td></tr>' % max(len(table.columns), 1)]
    else:
        numeric = [all(reporttext._is_number(str(row[i])) for row in table.rows) for i in range(len(table.columns))]
        rows = []
        for row in table.rows:
            rows.append("<tr>%s</tr>" % "".join(
                '<td%s>%s</td>' % (' class="n"' if numeric[i] else "", esc(cell)) for i, cell in enumerate(row)))
        head = "".join('<th%s>%s</th>' % (' class="n"' if numeric[i] else "", esc(name))
                       for i, name in enumerate(table.columns))
        rows.insert(0, "<tr>%s</tr>" % head)
    note = '<p class="note">%s</p>' % esc(table.note) if table.note else ""
    return '<div class="scroll"><table>%s</table></div>%s' % ("".join(rows), note)


def _legend(items):
    return '<div class="legend">%s</div>' % "".join(
        '<span><i style="background:%s"></i>%s</span>' % (fill, esc(name)) for name, fill in items)


def _section(title, *parts, key=""):
    return '<section id="%s"><h2>%s</h2>%s</section>' % (esc(key), esc(title), "".join(parts))


def render(data):
    """Return the whole report as one HTML document."""
    taken = {}
    tables = {table.key: table for table in reporttext.sections(data)}
    grey, queue = data["greylist"], data["queue"]
    cards = [("connections", data["connections"]), ("accepted", data["accepted"]),
             ("refusals", data["refused"]), ("greylist pass rate",
                                              "-" if grey["pass_rate"] is None else "%.0f%%" % grey["pass_rate"]),
             ("spam tagged or worse", sum(queue["actions"].get(a, 0) for a in ("tag", "quarantine", "drop", "reject"))),
             ("viruses", sum(queue["viruses"].values()))]
    out = ['<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           '<title>qtools-report: %s</title><style>%s</style></head><body><main>' % (
               esc(reporttext.period(data)), STYLE),
           '<h1>qtools-report</h1><p class="sub">%s &middot; %d lines read, %d decisions</p>' % (
               esc(reporttext.period(data)), data["lines"], data["decisions"]),
           '<div class="cards">%s</div>' % "".join(
               '<div class="card"><b>%s</b><span>%s</span></div>' % (esc(v), esc(k)) for k, v in cards)]
    chart, legend = hours_chart(data, taken)
    out.append(_section("Accepted and refused per hour", chart, _legend(legend), key="chart-hours"))
    by_reason = [("%s %s" % (r["prog"], r["reason"]), r["count"], colour(r["prog"], taken))
                 for r in data["refusals"][:12]]
    delays = [(name, count, None) for name, count in grey["delays"].items()]
    out.append('<div class="grid">%s%s</div>' % (
        _section("Refusals by program and reason", bars_chart(by_reason, "refusals by reason", "#d62728"),
                 key="chart-refusals"),
        _section("Spam score distribution", scores_chart(queue), key="chart-scores")))
    out.append('<div class="grid" style="margin-top:16px">%s%s</div>' % (
        _section("Greylist: delay before the retry that passed", bars_chart(delays, "greylist retry delays",
                                                                             "#f2a541"),
                 '<p class="note">%s</p>' % esc(tables["greylist"].note), key="chart-greylist"),
        _section("Content filter: messages by action",
                 bars_chart([(k, v, None) for k, v in queue["actions"].items()], "messages by action", "#7f3c8d"),
                 key="chart-queue")))
    out.append('<div style="height:16px"></div>')
    # Narrow tables go two to a row.
    waiting = None
    for table in tables.values():
        section = _section(table.title, _table(table), key="table-" + table.key)
        if len(table.columns) > 3:
            out += [waiting or "", section]
            waiting = None
        elif waiting is None:
            waiting = section
        else:
            out.append('<div class="grid" style="margin-bottom:16px">%s%s</div>' % (waiting, section))
            waiting = None
    out.append(waiting or "")
    out.append('<p class="note">qtools-report &middot; every number from the decision lines of the smtpd '
               'log</p></main></body></html>\n')
    return "\n".join(out)
