"""The mutation catalogue: plausible bugs in the RTL, the model, the scoreboard and the
harness, each a single textual edit that ``make test`` must notice.

A :class:`Mutant` replaces ``old`` by ``new`` in one file; ``old`` must occur there
exactly once, so an entry that no longer fits the code is an error (``check``), never a
silent no-op. ``tests`` are the pytest selections tried first (the ones expected to
catch it); the runner falls back to the whole fast suite. Every entry stands for a bug a
person could write: a dropped term, an off-by-one, a swapped operand, a missing flush.
"""

import dataclasses

from .rtl import RTL
from .model import MODEL
from .harness import HARNESS

__all__ = ["Mutant", "CATALOGUE", "CatalogueError", "check"]


class CatalogueError(Exception):
    """An entry that does not apply to the checkout."""


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    area: str           # "rtl", "model", "scoreboard" or "harness"
    path: str           # the file edited, relative to the repository
    old: str
    new: str
    bug: str            # the real bug it stands for, in a few words
    tests: tuple        # pytest selections tried first

    def edited(self, text):
        """``text`` (the file's) with the bug planted."""
        count = text.count(self.old)
        if count != 1:
            raise CatalogueError(f"{self.name}: {self.path} holds the text to replace "
                                 f"{count} times, not once")
        return text.replace(self.old, self.new)

    def apply(self, tree):
        """Edit the file under ``tree``."""
        file = tree / self.path
        file.write_text(self.edited(file.read_text()))


CATALOGUE = [Mutant(**entry) for entry in (*RTL, *MODEL, *HARNESS)]


def check(repo):
    """Every entry is well formed and applies to ``repo``'s files (read only)."""
    names = [m.name for m in CATALOGUE]
    twice = {n for n in names if names.count(n) > 1}
    if twice:
        raise CatalogueError(f"mutant names used twice: {', '.join(sorted(twice))}")
    for m in CATALOGUE:
        if m.area not in ("rtl", "model", "scoreboard", "harness"):
            raise CatalogueError(f"{m.name}: unknown area {m.area!r}")
        if not m.tests or m.old == m.new:
            raise CatalogueError(f"{m.name}: no tests named, or an edit that changes nothing")
        file = repo / m.path
        if not file.is_file():
            raise CatalogueError(f"{m.name}: no file {m.path}")
        m.edited(file.read_text())
        for test in m.tests:
            if not (repo / test.split("::")[0]).exists():
                raise CatalogueError(f"{m.name}: no test file {test.split('::')[0]}")
