# SPDX-License-Identifier: ISC
"""qtools-report's tables, and the plain-text summary (pflogsumm style) made of them.

sections() turns the counts (Stats.as_dict) into titled tables that both
the text here and the HTML page (reporthtml) show.
"""

import time


class Table:
    """A titled table: column names, rows of cells, a note under it."""

    def __init__(self, title, columns, rows, note="", key=""):
        self.title = title
        self.columns = columns
        self.rows = rows
        self.note = note
        self.key = key


def when(unix, seconds=False):
    """Return a Unix time as local "YYYY-MM-DD HH:MM[:SS]"."""
    if unix is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M", time.localtime(unix))


def period(data):
    """Return the period a report covers, as one line."""
    start = data["start"] if data["start"] is not None else data["first"]
    end = data["end"] if data["end"] is not None else data["last"]
    if start is None and end is None:
        return "lines without time stamps"
    return "%s to %s" % (when(start), when(end))


def percent(part, whole):
    return "%.1f%%" % (100.0 * part / whole) if whole else "-"


def seconds_text(value):
    """Return a delay in seconds the way an admin reads it: 45s, 6m05s, 2h10m."""
    if value is None:
        return "-"
    value = int(value)
    if value < 60:
        return "%ds" % value
    if value < 3600:
        return "%dm%02ds" % (value // 60, value % 60)
    if value < 86400:
        return "%dh%02dm" % (value // 3600, value % 3600 // 60)
    return "%dd%02dh" % (value // 86400, value % 86400 // 3600)


def sections(data):
    """Return the report's Tables in the order they are shown."""
    queue, grey = data["queue"], data["greylist"]
    refused = data["refused"]
    totals = [
        ("connections", data["connections"], "counted from " + data["connections_from"]),
        ("messages accepted", data["accepted"], "qtools-queue lines: 250 to the client"),
        ("messages delivered", data["delivered"], "deliver, tag, unscanned"),
        ("refusals", refused, "every 4xx/5xx reply logged"),
        ("greylist deferrals", grey["deferrals"], "%d client(s) or triplet(s)" % grey["deferred"]),
        ("greylist passed later", grey["passed_later"], "pass rate %s" % (
            "-" if grey["pass_rate"] is None else "%.1f%%" % grey["pass_rate"])),
        ("tarpit delays", data["tarpit"]["delays"], "%s in all" % seconds_text(data["tarpit"]["seconds"])),
        ("viruses", sum(queue["viruses"].values()), ""),
        ("decision lines", data["decisions"], "of %d lines read" % data["lines"]),
    ]
    tables = [Table("Grand totals", ["", "count", ""], [list(row) for row in totals], key="totals")]
    rows = [[r["prog"], r["code"] or "-", r["reason"], r["count"], percent(r["count"], refused)]
            for r in data["refusals"]]
    tables.append(Table("Refusals by program and reason", ["program", "code", "reason", "count", "share"],
                        rows, "reason: the list= of a DNSBL, else the why= the program logged",
                        key="refusals"))
    others = [[r["prog"], r["reason"], r["count"]] for r in data["dryruns"]]
    others += [[name.split(":", 1)[0], "mark " + name.split(":", 1)[1], count]
               for name, count in data["marks"].items()]
    if others:
        tables.append(Table("Marks and dry runs (not refused)", ["program", "what", "count"], others,
                            key="marks"))
    tables.append(_per_hour(data))
    tables.append(Table("Top client networks refused", ["network", "refusals"],
                        [list(item) for item in data["top_networks"]], key="networks"))
    tables.append(Table("Top recipients refused", ["recipient", "refusals"],
                        [list(item) for item in data["top_recipients"]], key="recipients"))
    tables.append(_greylist(grey))
    tables += _content(queue)
    if data["problems"]:
        tables.append(Table("Warnings and errors", ["program", "kind", "message", "count"],
                            [[p["prog"], p["kind"], p["text"], p["count"]] for p in data["problems"]],
                            key="problems"))
    tables.append(Table("Decisions by program", ["program", "verdict", "count"],
                        [[a["prog"], a["verdict"], a["count"]] for a in data["actions"]],
                        "the lines that refused nothing: passes, skips, marks, delays, ends",
                        key="actions"))
    return tables


def programs_of(data):
    """Return the programs that refused, most refusals first."""
    return list(data["refused_by_prog"])


def _per_hour(data):
    progs = programs_of(data)
    rows = []
    for hour in data["hours"]:
        refused = hour["refused"]
        rows.append([when(hour["hour"]), hour["connections"], hour["accepted"], sum(refused.values())]
                    + [refused.get(prog, 0) for prog in progs])
    return Table("Per hour", ["hour", "connections", "accepted", "refused"] + progs, rows, key="hours")


def _greylist(grey):
    rows = [[label, count] for label, count in grey["delays"].items()]
    note = "%d deferrals of %d clients; %d of them passed later (%s); median wait %s" % (
        grey["deferrals"], grey["deferred"], grey["passed_later"],
        "-" if grey["pass_rate"] is None else "%.1f%%" % grey["pass_rate"],
        seconds_text(grey["median_delay"]))
    return Table("Greylist: how long the retries that passed waited", ["waited", "retries"], rows, note,
                 key="greylist")


def _content(queue):
    tables = [Table("Content filter: messages by action", ["action", "messages"],
                    [list(item) for item in queue["actions"].items()],
                    "%d recipients, %d bytes accepted" % (queue["recipients"], queue["bytes"]),
                    key="queue")]
    if queue["viruses"]:
        tables.append(Table("Viruses by name", ["virus", "messages"],
                            [list(item) for item in queue["viruses"].items()], key="viruses"))
    marks = queue["thresholds"]
    rows = []
    scores = {int(k): v for k, v in queue["scores"].items()}
    bins = set(scores) | {int(value // 1) for value in marks.values() if value is not None}
    for score in range(min(bins), max(bins) + 1) if bins else ():
        count = scores.get(score, 0)
        lines = [name for name, value in marks.items() if value is not None and score <= value < score + 1]
        rows.append(["%d to %d" % (score, score + 1), count, " ".join("<- " + name for name in lines)])
    note = "  ".join("%s at %s" % (name, value) for name, value in marks.items() if value is not None)
    tables.append(Table("Spam score distribution", ["score", "messages", ""], rows, note, key="scores"))
    return tables


def render(data):
    """Return the whole summary as text, for a terminal or a cron mail."""
    out = ["qtools-report: %s" % period(data), ""]
    for table in sections(data):
        out.append(table.title)
        out.append("-" * len(table.title))
        if table.rows:
            out += _columns(table)
        else:
            out.append("  (none)")
        if table.note:
            out.append("  " + table.note)
        out.append("")
    return "\n".join(out)


def _columns(table):
    cells = [[str(c) for c in table.columns]] + [[str(c) for c in row] for row in table.rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(table.columns))]
    numeric = [all(_is_number(row[i]) for row in cells[1:]) for i in range(len(widths))]
    lines = []
    for row in cells:
        parts = [cell.rjust(width) if right else cell.ljust(width)
                 for cell, width, right in zip(row, widths, numeric)]
        lines.append(("  " + "  ".join(parts)).rstrip())
    if any(table.columns):
        lines.insert(1, "  " + "  ".join("-" * width for width in widths))
    return lines


def _is_number(text):
    return text.replace(".", "", 1).replace("%", "", 1).lstrip("-").isdigit() or text == "-"
