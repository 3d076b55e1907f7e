"""Validation problems, each located by source, document index and field path."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    source: str  # file path, "api" for live objects
    doc: int | None  # document index within the file (0-based), None when not from a file
    path: str  # field path, e.g. spec.ingress[0].ports[1].endPort
    message: str
    kind: str = ""
    name: str = ""  # namespace/name of the object when known

    def __str__(self) -> str:
        where = self.source if self.doc is None else f"{self.source}[doc {self.doc}]"
        obj = f" {self.kind} {self.name}" if self.kind else ""
        return printable(f"{where}{obj}: {self.path}: {self.message}")


def printable(text: str) -> str:
    """`text` with every character a terminal would act on (ESC, other controls, bidi
    overrides such as U+202E) written as its escape: names from the input reach the
    screen as what they are."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class InvalidInput(Exception):
    """Raised by the CLI edges when input has problems; carries all of them."""

    def __init__(self, problems: list[Problem]):
        super().__init__(f"{len(problems)} problem(s)")
        self.problems = problems
