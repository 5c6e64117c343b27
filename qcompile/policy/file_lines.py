"""Where a key sits in a policy file, so errors can name its line.

`tomllib` and `json` give values, not positions. These scanners read the text once and map
each key path (``("weight",)``, ``("rules", 1, "grad_dgrad")``, ``("rules", 1)``) to the line
where it first appears. They only read; they never evaluate anything.
"""

from __future__ import annotations

import re

KeyPath = tuple  # of str (table keys) and int (array indices)

_TOML_ARRAY_TABLE = re.compile(r"^\s*\[\[\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\]")
_TOML_TABLE = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]")
_TOML_KEY = re.compile(r"^\s*(\"[^\"]*\"|'[^']*'|[A-Za-z0-9_\-]+)\s*=")


def toml_key_lines(text: str) -> dict[KeyPath, int]:
    """Key paths of a TOML document → 1-based line numbers (tables, array tables, ``key =``)."""
    out: dict[KeyPath, int] = {}
    table: KeyPath = ()
    counts: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        m = _TOML_ARRAY_TABLE.match(line)
        if m:
            name = m.group(1).strip("\"'")
            index = counts.get(name, 0)
            counts[name] = index + 1
            table = (name, index)
            out.setdefault((name,), number)
            out.setdefault(table, number)
            continue
        m = _TOML_TABLE.match(line)
        if m:
            table = tuple(m.group(1).strip("\"'").split("."))
            out.setdefault(table, number)
            continue
        m = _TOML_KEY.match(line)
        if m:
            out.setdefault(table + (m.group(1).strip("\"'"),), number)
    return out


def json_key_lines(text: str) -> dict[KeyPath, int]:
    """Key paths of a JSON document → 1-based line numbers (object keys and array elements)."""
    out: dict[KeyPath, int] = {}
    stack: list[list] = []  # ["obj", current key] or ["arr", index]
    line, i, n = 1, 0, len(text)

    def path() -> KeyPath:
        return tuple(entry[1] for entry in stack)

    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
        elif ch == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            k = j + 1
            while k < n and text[k] in " \t\r":
                k += 1
            if stack and stack[-1][0] == "obj" and k < n and text[k] == ":":
                stack[-1][1] = text[i + 1 : j]
                out.setdefault(path(), line)
            i = j
        elif ch in "{[":
            if stack and stack[-1][0] == "arr":
                out.setdefault(path(), line)
            stack.append(["obj", None] if ch == "{" else ["arr", 0])
        elif ch in "}]":
            if stack:
                stack.pop()
        elif ch == "," and stack and stack[-1][0] == "arr":
            stack[-1][1] += 1
        i += 1
    return out


def line_of(lines: dict[KeyPath, int], key_path: KeyPath) -> int | None:
    """Line of ``key_path``, else of its nearest enclosing path that was found."""
    for end in range(len(key_path), 0, -1):
        found = lines.get(tuple(key_path[:end]))
        if found is not None:
            return found
    return None


def format_key_path(key_path: KeyPath) -> str:
    """``("rules", 1, "weight")`` → ``rules[1].weight``."""
    out = ""
    for part in key_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
