"""Map a key path such as ``('policies', 'web', 'allow', 3)`` to the line of a TOML file it was written on.

tomllib returns values without positions; this scanner walks the same text once and records the line where
each table, key and array element starts, so that config errors can name file, line and key.
"""

from __future__ import annotations

Loc = tuple[str | int, ...]


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.lines: dict[Loc, int] = {}
        self.array_tables: dict[Loc, int] = {}

    def line(self) -> int:
        return self.text.count("\n", 0, self.pos) + 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_space(self, newlines: bool) -> None:
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            elif ch in " \t\r" or (newlines and ch == "\n"):
                self.pos += 1
            else:
                return

    def record(self, loc: Loc) -> None:
        self.lines.setdefault(loc, self.line())

    def key(self) -> list[str]:
        parts: list[str] = []
        while True:
            self.skip_space(False)
            ch = self.peek()
            if ch in "\"'":
                parts.append(self.string())
            else:
                start = self.pos
                while self.pos < len(self.text) and self.text[self.pos] not in " \t=.]\n":
                    self.pos += 1
                parts.append(self.text[start : self.pos])
            self.skip_space(False)
            if self.peek() != ".":
                return parts
            self.pos += 1

    def string(self) -> str:
        quote = self.text[self.pos]
        triple = self.text.startswith(quote * 3, self.pos)
        delim = quote * 3 if triple else quote
        self.pos += len(delim)
        start = self.pos
        while self.pos < len(self.text) and not self.text.startswith(delim, self.pos):
            if quote == '"' and self.text[self.pos] == "\\":
                self.pos += 1
            self.pos += 1
        value = self.text[start : self.pos]
        self.pos += len(delim)
        return value

    def value(self, loc: Loc) -> None:
        self.record(loc)
        ch = self.peek()
        if ch in "\"'":
            self.string()
        elif ch == "[":
            self.pos += 1
            index = 0
            while True:
                self.skip_space(True)
                if self.peek() in ("]", ""):
                    self.pos += 1
                    return
                self.value((*loc, index))
                index += 1
                self.skip_space(True)
                if self.peek() == ",":
                    self.pos += 1
        elif ch == "{":
            self.pos += 1
            while True:
                self.skip_space(False)
                if self.peek() in ("}", "", "\n"):
                    self.pos += 1
                    return
                sub = tuple(self.key())
                self.skip_space(False)
                self.pos += 1  # '='
                self.skip_space(False)
                self.value((*loc, *sub))
                self.skip_space(False)
                if self.peek() == ",":
                    self.pos += 1
        else:
            while self.pos < len(self.text) and self.text[self.pos] not in ",]}\n#":
                self.pos += 1

    def document(self) -> dict[Loc, int]:
        table: Loc = ()
        while True:
            self.skip_space(True)
            if self.pos >= len(self.text):
                return self.lines
            if self.text.startswith("[[", self.pos):
                self.pos += 2
                name = tuple(self.key())
                index = self.array_tables.get(name, -1) + 1
                self.array_tables[name] = index
                table = (*name, index)
                self.record(table)
                self.pos = self.text.find("]]", self.pos) + 2
            elif self.peek() == "[":
                self.pos += 1
                table = tuple(self.key())
                self.record(table)
                self.pos = self.text.find("]", self.pos) + 1
            else:
                key = (*table, *self.key())
                self.skip_space(False)
                if self.peek() != "=":  # not TOML we understand; tomllib has already accepted the file
                    end = self.text.find("\n", self.pos)
                    self.pos = len(self.text) if end < 0 else end
                    continue
                self.pos += 1
                self.skip_space(False)
                self.value(key)


def line_of(text: str, loc: Loc) -> int | None:
    """The line where the longest written prefix of ``loc`` starts, or None if nothing of it is written."""
    lines = _Scanner(text).document()
    for end in range(len(loc), 0, -1):
        found = lines.get(tuple(loc[:end]))
        if found is not None:
            return found
    return None


def format_loc(loc: Loc) -> str:
    """('policies', 'web', 'allow', 3) → 'policies.web.allow[3]'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out
