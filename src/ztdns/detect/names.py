"""Names as the detectors see them: the registered domain (Public Suffix List), what the labels below it carry,
and a safe printable form.

The Public Suffix List is the copy the ``publicsuffixlist`` package ships (offline; updated with the package).
Rules are compiled once into sets of wire labels, so finding the registered domain of a name is a walk of at
most seven dictionary look-ups on byte strings, with no text decoding.
"""

from __future__ import annotations

import importlib.resources
from functools import cache

# What a registered domain is for a name with no known suffix (".internal", ".lan"): the PSL default rule "*".
_DEFAULT_SUFFIX_LABELS = 1


class SuffixList:
    """The Public Suffix List as sets of lower-case dotted byte strings (b"co.uk")."""

    def __init__(self, text: str) -> None:
        self.rules: set[bytes] = set()
        self.wildcards: set[bytes] = set()  # "*.ck" → b"ck"
        self.exceptions: set[bytes] = set()  # "!www.ck" → b"www.ck"
        self.nodes: set[bytes] = set()  # every tail of every rule: where a walk may go on
        for line in text.splitlines():
            rule = line.strip().split(" ", 1)[0]
            if not rule or rule.startswith("//"):
                continue
            target = self.rules
            if rule.startswith("!"):
                target, rule = self.exceptions, rule[1:]
            elif rule.startswith("*."):
                target, rule = self.wildcards, rule[2:]
            try:
                encoded = rule.encode("idna").lower()
            except UnicodeError:
                continue  # a rule Python's IDNA 2003 codec cannot encode: it cannot match a name on the wire either
            target.add(encoded)
            parts = encoded.split(b".")
            for start in range(len(parts)):
                self.nodes.add(b".".join(parts[start:]))

    def registered(self, name: bytes) -> int:
        """Where the registered domain starts in ``name`` (lower-case, dotted, no final dot); -1 if it is a suffix.

        ``name[registered(name):]`` is the registered domain ("example.co.uk" of "a.b.example.co.uk").
        """
        end = len(name)
        suffix_start = name.rfind(b".") + 1  # the PSL default rule "*": the last label is a public suffix
        cut = end
        while cut > 0:
            dot = name.rfind(b".", 0, cut - 1) if cut < end else name.rfind(b".")
            start = dot + 1
            tail = name[start:]
            if cut < end and tail not in self.exceptions and name[cut:] in self.wildcards:
                suffix_start = start
            if tail in self.rules:
                suffix_start = start
            elif tail in self.exceptions:
                suffix_start = cut
            if tail not in self.nodes or dot < 0:
                break
            cut = start
        if suffix_start == 0:
            return -1
        return name.rfind(b".", 0, suffix_start - 1) + 1


@cache
def suffix_list() -> SuffixList:
    data = importlib.resources.files("publicsuffixlist").joinpath("public_suffix_list.dat")
    return SuffixList(data.read_text(encoding="utf-8"))


_PRINTABLE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_*")


def escape_label(label: bytes) -> str:
    """A label as text safe in logs, EDE text and HTML: letters, digits, '-', '_' as such, anything else as \\DDD."""
    if all(byte in _PRINTABLE for byte in label):
        return label.decode("ascii")
    return "".join(chr(byte) if byte in _PRINTABLE else f"\\{byte:03d}" for byte in label)


def escape_name(labels: tuple[bytes, ...] | list[bytes]) -> str:
    """A name (labels without the root) as escaped text, "." for the root."""
    return ".".join(escape_label(label) for label in labels) or "."


def escape_text(text: str) -> str:
    """An identity, address or other client-derived text, safe to print: anything unusual as \\DDD (or \\u)."""
    return "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_.:/@*") else _escaped_char(ch) for ch in text)


def _escaped_char(ch: str) -> str:
    code = ord(ch)
    return f"\\{code:03d}" if code < 256 else f"\\u{code:04x}"
