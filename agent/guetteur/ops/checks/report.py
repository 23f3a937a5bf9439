"""What one check says (``Check``: verdict, detail, what to do) and how ``guetteur doctor`` prints
and judges a list of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Verdict = Literal["PASS", "WARN", "FAIL"]


@dataclass
class Check:
    """One line of the report: ``check`` and ``subject`` say what was checked, ``detail`` what was
    found, ``action`` what a technician does about a WARN or FAIL."""

    check: str
    subject: str
    verdict: Verdict
    detail: str
    action: str = ""


def format_report(checks: list[Check]) -> str:
    width = max(len(f"{c.check} {c.subject}") for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{c.verdict:4}  {f'{c.check} {c.subject}':<{width}}  {c.detail}")
        if c.action and c.verdict != "PASS":
            lines.append(f"      {'':<{width}}  → {c.action}")
    fails = sum(c.verdict == "FAIL" for c in checks)
    warns = sum(c.verdict == "WARN" for c in checks)
    verdict = "READY" if not fails else "NOT READY"
    lines.append(f"{verdict}: {len(checks)} checks, {fails} failed, {warns} warning(s)")
    return "\n".join(lines)


def exit_code(checks: list[Check], strict: bool = False) -> int:
    bad = {"FAIL", "WARN"} if strict else {"FAIL"}
    return 1 if any(c.verdict in bad for c in checks) else 0
