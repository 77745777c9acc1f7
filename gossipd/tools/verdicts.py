"""BENCHMARKS.md's verdicts at a glance: every goal's verdict line, counted per section and workload, and the
goals not met named, in a section of their own near the top of the file.

The benchmarks write their sections with one verdict line per goal ("… **met**", "… **NOT met**", "…: not
judged, …"); this reads those lines back from the file's text, so the summary can never say what the sections
do not. `gossipd.tools.reporting.replace_section` rebuilds it whenever it rewrites a file that has its markers.
Pure text in, text out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NAME = "verdicts"
BEGIN, END = f"<!-- {NAME}:begin -->", f"<!-- {NAME}:end -->"

_NOT_MET = re.compile(r"\bnot met\b", re.IGNORECASE)
_MET = re.compile(r"(?<!not )\bmet\b", re.IGNORECASE)
_NOT_JUDGED = re.compile(r"\bnot judged\b", re.IGNORECASE)
_CLAUSE = re.compile(r": (?:NOT )?met \(")


@dataclass(frozen=True)
class Verdict:
    section: str  # the `## ` heading the line is under
    workload: str  # the `### ` heading under it, or ""
    goal: str  # what the line judges (see `goal`)
    outcome: str  # "met", "not met", "partly met" (several settings on one line, some met) or "not judged"


def outcome(line: str) -> str | None:
    """The verdict a line gives, or None where it gives none (a line of figures, or one that only names the
    weakest configuration)."""
    missed, met = bool(_NOT_MET.search(line)), bool(_MET.search(line))
    if missed and met:
        return "partly met"
    if missed:
        return "not met"
    if met:
        return "met"
    if _NOT_JUDGED.search(line):
        return "not judged"
    return None


def goal(line: str) -> str:
    """What a verdict line judges: its bold lead ("**Startup ≤ 10 s: met**"), or its text up to its "(goal …)"
    where it states one, with the subject of the figures after it, or up to its bold verdict, or, on a line
    with no bold, up to its first ": "."""
    text = line.removeprefix("- ").strip()
    if text.startswith("**"):
        return text[2:].split("**", 1)[0].split(": ", 1)[0].strip()
    if "**" in text:
        several = text.count("**") > 2  # a verdict per setting: no one subject
        text = text.split("**", 1)[0]
        stated = re.match(r"(.*?\(goal [^)]*\)): (.*)", text)
        if stated is None:
            return text.strip().rstrip(":").strip()
        # Whom the line judges: its figures' subject ("PowerGossip r1 float16 96.87% against …").
        subject = re.split(r"\s(?=\d)|\s(?:did|nor)\b|;", stated.group(2), maxsplit=1)[0].strip(" ,")
        if several or not subject or subject.startswith("not judged"):
            return stated.group(1)
        return f"{stated.group(1)}, {subject}"
    return text.split(": ", 1)[0].strip()


def _claims(line: str) -> bool:
    """Whether a line may carry verdicts: a list item, or a line of "<setting>: NOT met (…)" clauses (the
    personal-layer section's), not prose that happens to say "met"."""
    return line.startswith("- ") or _CLAUSE.search(line) is not None


def verdicts(markdown: str) -> list[Verdict]:
    """Every verdict line of the file, outside the summary itself and outside code blocks."""
    found: list[Verdict] = []
    section = workload = ""
    inside_summary = fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if fenced:
            continue
        if line.strip() == BEGIN:
            inside_summary = True
        elif line.strip() == END:
            inside_summary = False
        if inside_summary:
            continue
        if line.startswith("## "):
            section, workload = line[3:].strip(), ""
        elif line.startswith("### "):
            workload = line[4:].strip()
        elif section and _claims(line):
            verdict = outcome(line)
            if verdict is not None:
                found.append(Verdict(section, workload, goal(line), verdict))
    return found


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but hyphens and underscores dropped, spaces to
    hyphens."""
    kept = re.sub(r"[^\w\- ]", "", heading.lower())
    return "#" + kept.replace(" ", "-")


def _short(heading: str) -> str:
    """A heading without its subtitle or parenthesis: "Side by side: gossipd, …" → "Side by side"."""
    return heading.split(": ", 1)[0].split(" (", 1)[0].strip()


def _place(verdict: Verdict) -> str:
    section = _short(verdict.section)
    return f"{section} › {_short(verdict.workload)}" if verdict.workload else section


def summary(markdown: str) -> str:
    """The summary's body: a table of counts per section and workload, then the goals not (or partly) met."""
    found = verdicts(markdown)
    if not found:
        return "No verdict lines yet."
    lines = [
        "| section | met | not met | partly met | not judged |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    places: dict[tuple[str, str], list[Verdict]] = {}
    for verdict in found:
        places.setdefault((verdict.section, verdict.workload), []).append(verdict)
    for (section, workload), group in places.items():
        link = anchor(workload or section)
        counts = [sum(v.outcome == kind for v in group) for kind in ("met", "not met", "partly met", "not judged")]
        lines.append(f"| [{_place(group[0])}]({link}) | " + " | ".join(str(c) for c in counts) + " |")
    missed = [v for v in found if v.outcome in ("not met", "partly met")]
    total = len(found)
    met = sum(v.outcome == "met" for v in found)
    lines += ["", f"{met} of {total} verdict lines met; not met or partly met:"]
    lines += [f"- {_place(v)}: {v.goal}{' (partly)' if v.outcome == 'partly met' else ''}" for v in missed]
    return "\n".join(lines)


def with_summary(markdown: str) -> str:
    """The file with its summary rebuilt, where it has the summary's markers; unchanged otherwise."""
    if BEGIN not in markdown or END not in markdown:
        return markdown
    head, rest = markdown.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    return f"{head}{BEGIN}\n{summary(markdown)}\n{END}{tail}"
