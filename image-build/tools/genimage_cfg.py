"""A small parser and validator for genimage configuration files (the libconfuse syntax genimage
reads), so that CI can check the image layout's template without genimage installed.

It understands what genimage configs are made of: `# ...`, `// ...` and `/* ... */` comments,
sections `kind [title] { ... }`, options `key = value` whose value is a quoted string, a bare word
(number, size, hex, boolean) or a `{ a, b }` list. Each section kind only accepts the options
genimage documents for it (a misspelt key is an error for genimage too: libconfuse refuses it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

Value = str | list[str]


class ConfigError(Exception):
    """A genimage config that genimage would refuse (line number in the message)."""


@dataclass
class Section:
    kind: str
    title: str | None
    line: int
    options: dict[str, Value] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)

    def sub(self, kind: str) -> list[Section]:
        return [s for s in self.sections if s.kind == kind]

    def text(self, key: str) -> str | None:
        v = self.options.get(key)
        return v if isinstance(v, str) else None


# Options per section kind, from genimage's README (v16..v19). Only the kinds a Raspberry Pi card
# layout uses are listed; any other kind is refused so that the list grows deliberately.
_IMAGE_OPTIONS = {
    "name",
    "size",
    "mountpoint",
    "srcpath",
    "empty",
    "temporary",
    "exec-pre",
    "exec-post",
    "flashtype",
}
_PARTITION_OPTIONS = {
    "offset",
    "size",
    "align",
    "partition-type",
    "partition-type-uuid",
    "partition-uuid",
    "bootable",
    "forced-primary",
    "read-only",
    "hidden",
    "no-automount",
    "image",
    "autoresize",
    "in-partition-table",
    "fill",
    "sparse",
    "holes",
}
_KIND_OPTIONS: dict[str, set[str]] = {
    "hdimage": {
        "align",
        "partition-table-type",
        "disk-signature",
        "disk-uuid",
        "extended-partition",
        "fill",
        "gpt-location",
        "gpt-no-backup",
        "gpt",
        "partition-table",
    },
    "vfat": {"extraargs", "label", "files"},
    "ext2": {
        "extraargs",
        "features",
        "label",
        "fs-timestamp",
        "root-owner",
        "use-mke2fs",
        "mke2fs-conf",
        "usage-type",
    },
    "android-sparse": {"image", "block-size", "add-crc"},
    "file": {"image"},
    "config": set(),
}
_KIND_OPTIONS["ext3"] = _KIND_OPTIONS["ext2"]
_KIND_OPTIONS["ext4"] = _KIND_OPTIONS["ext2"]
IMAGE_TYPES = {"hdimage", "vfat", "ext2", "ext3", "ext4", "android-sparse"}
_CHILDREN: dict[str, set[str]] = {
    "": {"image", "config"},
    "image": IMAGE_TYPES | {"partition"},
    "vfat": {"file"},
}

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r]+) | (?P<nl>\n)
  | (?P<comment>\#[^\n]*|//[^\n]*)
  | (?P<block>/\*.*?\*/)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<punct>[{}=,])
  | (?P<word>[^\s{}=,"]+)
    """,
    re.X | re.S,
)

SIZE = re.compile(r"^(\d+)([kKMGT]?|%)$")


def tokens(text: str) -> list[tuple[str, str, int]]:
    """(kind, text, line) for every meaningful token."""
    out: list[tuple[str, str, int]] = []
    pos, line = 0, 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ConfigError(f"line {line}: cannot read {text[pos : pos + 20]!r}")
        kind = m.lastgroup or ""
        s = m.group()
        if kind == "string":
            out.append(("string", bytes(s[1:-1], "utf-8").decode("unicode_escape"), line))
        elif kind in ("punct", "word"):
            out.append((kind if kind == "word" else s, s, line))
        elif kind == "block" and "*/" not in s:
            raise ConfigError(f"line {line}: unterminated /* comment")
        line += s.count("\n")
        pos = m.end()
    if "/*" in text and not re.search(r"/\*.*?\*/", text, re.S):
        raise ConfigError("unterminated /* comment")
    return out


def parse(text: str) -> Section:
    """The config as a tree under a root section of kind ''. Raises ConfigError."""
    toks = tokens(text)
    root = Section("", None, 0)
    stack = [root]
    i = 0

    def value(i: int) -> tuple[Value, int]:
        kind, s, line = toks[i]
        if kind in ("string", "word"):
            return s, i + 1
        if kind == "{":
            items: list[str] = []
            i += 1
            while i < len(toks) and toks[i][0] != "}":
                k, v, ln = toks[i]
                if k not in ("string", "word"):
                    raise ConfigError(f"line {ln}: list item expected, got {v!r}")
                items.append(v)
                i += 1
                if i < len(toks) and toks[i][0] == ",":
                    i += 1
            if i >= len(toks):
                raise ConfigError(f"line {line}: list not closed")
            return items, i + 1
        raise ConfigError(f"line {line}: value expected after '=', got {s!r}")

    while i < len(toks):
        kind, s, line = toks[i]
        here = stack[-1]
        if kind == "}":
            if len(stack) == 1:
                raise ConfigError(f"line {line}: '}}' without a section to close")
            stack.pop()
            i += 1
            continue
        if kind != "word":
            raise ConfigError(f"line {line}: option or section name expected, got {s!r}")
        nxt = toks[i + 1] if i + 1 < len(toks) else ("eof", "", line)
        if nxt[0] == "=":
            if i + 2 >= len(toks):
                raise ConfigError(f"line {line}: {s} = needs a value")
            if s in here.options:
                raise ConfigError(f"line {line}: {s} given twice in {here.kind or 'the file'}")
            here.options[s], i = value(i + 2)
            continue
        title: str | None = None
        if nxt[0] in ("word", "string"):
            title = nxt[1]
            i += 1
            nxt = toks[i + 1] if i + 1 < len(toks) else ("eof", "", line)
        if nxt[0] != "{":
            raise ConfigError(f"line {line}: '{s}' is neither 'key = value' nor a section")
        section = Section(s, title, line)
        here.sections.append(section)
        stack.append(section)
        i += 2
    if len(stack) != 1:
        raise ConfigError(f"line {stack[-1].line}: section '{stack[-1].kind}' is not closed")
    return root


def validate(root: Section) -> list[str]:
    """What genimage would refuse: unknown section kinds and options, images without exactly one
    type, partitions naming no image, sizes that do not parse, images defined twice."""
    problems: list[str] = []

    def walk(sec: Section, parent: str) -> None:
        allowed_children = _CHILDREN.get(sec.kind, set())
        for child in sec.sections:
            if child.kind not in allowed_children:
                problems.append(
                    f"line {child.line}: section '{child.kind}' not allowed in "
                    f"'{sec.kind or 'top level'}'"
                )
                continue
            if child.kind in ("image", "partition", "file") and not child.title:
                problems.append(f"line {child.line}: '{child.kind}' needs a name")
            walk(child, sec.kind)
        if sec.kind == "":
            return
        known = (
            _IMAGE_OPTIONS
            if sec.kind == "image"
            else _PARTITION_OPTIONS
            if sec.kind == "partition"
            else _KIND_OPTIONS.get(sec.kind)
        )
        if known is None:
            return
        for key, val in sec.options.items():
            if key not in known:
                problems.append(f"line {sec.line}: '{sec.kind}' has no option '{key}'")
            if key in ("size", "align", "offset") and not (
                isinstance(val, str) and SIZE.match(val)
            ):
                problems.append(f"line {sec.line}: {sec.kind} {key} = {val!r} is not a size")

    walk(root, "")
    images = [s for s in root.sections if s.kind == "image"]
    names = [s.title for s in images]
    for n in sorted({n for n in names if names.count(n) > 1 and n}):
        problems.append(f"image '{n}' defined twice")
    for img in images:
        types = [s for s in img.sections if s.kind in IMAGE_TYPES]
        if len(types) != 1:
            problems.append(
                f"line {img.line}: image '{img.title}' needs exactly one type section "
                f"({', '.join(sorted(IMAGE_TYPES))}), has {len(types)}"
            )
        for part in img.sub("partition"):
            ref = part.text("image")
            if ref is not None and ref not in names:
                problems.append(
                    f"line {part.line}: partition '{part.title}' uses image '{ref}', "
                    "which is not defined"
                )
    return problems


def image(root: Section, title: str) -> Section | None:
    return next((s for s in root.sections if s.kind == "image" and s.title == title), None)


def image_type(img: Section) -> Section | None:
    return next((s for s in img.sections if s.kind in IMAGE_TYPES), None)


def size_bytes(size: str) -> int:
    m = SIZE.match(size)
    if not m or m.group(2) == "%":
        raise ConfigError(f"{size!r} is not an absolute size")
    return int(m.group(1)) * {"": 1, "k": 1024, "K": 1024, "M": 1 << 20, "G": 1 << 30}.get(
        m.group(2), 1 << 40
    )
