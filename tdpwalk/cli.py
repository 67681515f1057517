"""``tdpwalk COMMAND ...``: one command for the RTL and its simulations.

Each command is the command line of the layer that does the work, which keeps its own
``python -m`` form: ``generate`` and ``lint`` are ``python -m hw``'s; ``run`` replays a
vector file on the walker in Amaranth's simulator (``python -m hw run``) or, with
``--sim icarus|verilator``, on its Verilog under cocotb (``python -m
cocotb_tests.replay_cli``); ``demo`` is ``python -m cocotb_tests.demo``. Bad input ends in
one ``error: ...`` line and exit status 2.
"""

import sys

__all__ = ["main", "COMMANDS"]

#: Command -> what it does (``tdpwalk -h``).
COMMANDS = {
    "generate": "write Verilog for a configuration of the walker or the MMU",
    "lint": "lint the generated Verilog with Verilator -Wall and elaborate it with Icarus",
    "run": "replay a vector file on the walker: --sim amaranth (default), icarus or "
           "verilator; one JSON result per line",
    "demo": "the MMU co-simulation driven by the TDP MMU model (make demo)",
}


def _usage():
    width = max(map(len, COMMANDS))
    return ("usage: tdpwalk COMMAND [options]  (tdpwalk COMMAND -h for its options)\n\n"
            + "".join(f"  {name:{width}}  {what}\n" for name, what in COMMANDS.items()))


def _sim_of(args):
    """The value of ``--sim`` in ``args``, or None."""
    for i, arg in enumerate(args):
        if arg == "--sim" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--sim="):
            return arg.split("=", 1)[1]
    return None


def main(argv=None):
    """Run a command; its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        sys.stdout.write(_usage())
        return 0
    if not argv or argv[0] not in COMMANDS:
        given = f"unknown command {argv[0]!r}" if argv else "a command is required"
        print(f"error: tdpwalk: {given} (choose from {', '.join(COMMANDS)}; see tdpwalk -h)",
              file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "demo":
        from cocotb_tests.demo import main as demo
        return demo(rest, prog="tdpwalk demo")
    if command == "run" and _sim_of(rest) not in (None, "amaranth"):
        from cocotb_tests.replay_cli import main as replay
        return replay(rest, prog="tdpwalk run")
    from hw.__main__ import main as hw
    return hw([command, *rest], prog="tdpwalk")
