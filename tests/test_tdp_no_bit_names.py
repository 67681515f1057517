"""The TDP core (sw_model/tdp) names no format bit: everything goes through the arch
hooks, so the same core drives EPT, NPT and G-stage tables."""

import pathlib
import re

import sw_model.tdp
from sw_model.formats import FORMAT_NAMES, get_format

CORE = pathlib.Path(sw_model.tdp.__file__).parent

# Ways of reaching into an entry's layout instead of asking a hook.
FORBIDDEN_CALLS = [r"\.fields\b", r"\.sw_fields\b", r"\bframe_field\b", r"\bframe_shift\b",
                   r"\bfrozen_word\b", r"\.decode\(", r"\.make_leaf\(", r"\.make_table\(",
                   r"\.is_present\(", r"\bput_frame\b", r"\.arch\b"]
ARCH_WORDS = [r"\bept\d?\b", r"\bnpt\d?\b", r"\bgstage\b", r"\bsv\d\dx4\b", r"\bx86\b",
              r"\briscv\b", r"\bintel\b", r"\bamd\b"]


def _code_lines(path):
    """Source lines without comments and docstrings (prose may mention KVM's names)."""
    import ast
    import io
    import tokenize
    source = path.read_text()
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            docstrings.update(range(body[0].lineno, body[0].end_lineno + 1))
    lines = source.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            row, col = tok.start
            lines[row - 1] = lines[row - 1][:col]
    return {n: line for n, line in enumerate(lines, 1)
            if line.strip() and n not in docstrings}


def _bit_names():
    names = set()
    for name in FORMAT_NAMES:
        fmt = get_format(name)
        names |= set(fmt.fields) | set(fmt.sw_fields)
    return names


def test_core_names_no_format_bit():
    files = sorted(CORE.glob("*.py"))
    assert len(files) >= 5
    quoted = [re.compile(r"""["']%s["']""" % re.escape(n)) for n in _bit_names()]
    patterns = [re.compile(p) for p in FORBIDDEN_CALLS] + \
        [re.compile(p, re.IGNORECASE) for p in ARCH_WORDS]
    offences = []
    for path in files:
        for number, line in _code_lines(path).items():
            for pattern in quoted + patterns:
                if pattern.search(line):
                    offences.append(f"{path.name}:{number}: {pattern.pattern}: {line}")
        # Hex literals are bit masks in disguise.
        for number, line in _code_lines(path).items():
            if re.search(r"\b0x[0-9a-fA-F]+\b", line):
                offences.append(f"{path.name}:{number}: hex literal: {line}")
    assert not offences, "format bits named in the TDP core:\n" + "\n".join(offences)


def test_the_grep_catches_an_offence(tmp_path):
    """The check itself works: a line naming a bit is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text('"""doc mentions the \'d\' bit"""\nword = fmt.fields["d"].mask  # ept\n')
    lines = _code_lines(bad)
    assert list(lines) == [2]
    assert re.search(r"""["']d["']""", lines[2]) and re.search(FORBIDDEN_CALLS[0], lines[2])
