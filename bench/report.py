"""What a benchmark returns: tables that ``python -m bench`` prints and writes to
docs/results.md.

Every ``bench/bench_<name>.py`` has ``main(quick=False) -> list[Table]``; it may print
progress while it runs, and the runner prints each table as it arrives.
"""

from dataclasses import dataclass, field

__all__ = ["Table"]


@dataclass
class Table:
    """One result table.

    Members
    -------
    title : str
        A heading (``### title`` in docs/results.md).
    columns : list of str
    rows : list of list
        Cells are printed with ``str``; format numbers before adding them.
    note : str
        What was measured and how (configuration, units, what a ratio compares).
    plots : list of str
        Paths (relative to docs/) of PNG plots that belong to this table.
    """
    title: str
    columns: list
    rows: list
    note: str = ""
    plots: list = field(default_factory=list)

    def __post_init__(self):
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(f"table {self.title!r}: row {i} has {len(row)} cells, "
                                 f"expected {len(self.columns)} ({', '.join(self.columns)})")

    def text(self):
        """Plain-text rendering for the terminal."""
        cells = [list(map(str, self.columns))] + [[str(c) for c in r] for r in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]
        lines = [self.title]
        lines += ["  " + "  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
        if self.note:
            lines.append(f"  ({self.note})")
        return "\n".join(lines)

    def markdown(self):
        """A Markdown section for docs/results.md."""
        out = [f"### {self.title}", ""]
        out.append("| " + " | ".join(map(str, self.columns)) + " |")
        out.append("|" + "---|" * len(self.columns))
        out += ["| " + " | ".join(str(c) for c in row) + " |" for row in self.rows]
        if self.note:
            out += ["", self.note]
        out += [f"\n![{self.title}]({p})" for p in self.plots]
        return "\n".join(out) + "\n"
