"""docs/architecture.md's module map lists every module of the package, and only those."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "agent" / "guetteur"
DOC = ROOT / "docs" / "architecture.md"


def modules_in_tree() -> set[str]:
    return {
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p.name != "__init__.py" or p.parent == PACKAGE or p.parent.name in ("sources", "config")
    }


def modules_in_map() -> set[str]:
    text = DOC.read_text()
    map_part = text.split("## Module map", 1)[1].split("\n## ", 1)[0]
    return {m for m in re.findall(r"`([a-z0-9_/]+\.py)`", map_part)}


def test_module_map_matches_the_tree() -> None:
    tree, documented = modules_in_tree(), modules_in_map()
    assert not tree - documented, (
        f"modules missing from docs/architecture.md: {sorted(tree - documented)}"
    )
    assert not documented - tree, (
        f"docs/architecture.md lists modules that do not exist: {sorted(documented - tree)}"
    )


def test_readme_links_the_architecture_and_nothing_outside_the_repository() -> None:
    """A user's clone has nothing beside it: no link may leave the repository."""
    readme = (ROOT / "README.md").read_text()
    assert "docs/architecture.md" in readme
    outside = re.findall(r"\]\((\.\./[^)]*)\)", readme)
    assert not outside, f"README links outside the repository: {outside}"
