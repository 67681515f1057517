"""What both command lines (``python -m sw_model`` and ``python -m hw``) share: bad
input ends in one ``error: ...`` line on stderr and exit status 2, never a traceback."""

import argparse
import sys

__all__ = ["OneLineParser", "run_command", "positive_int", "probability"]


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr and exit status 2
    (argparse's default prints the whole usage first); ``-h`` still prints it."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} -h)\n")


def positive_int(text):
    """argparse type: an integer >= 1."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def probability(text):
    """argparse type: a float in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1), got {value}")
    return value


def run_command(func, args, errors):
    """``func(args)``'s exit status (None counts as 0); an exception of ``errors`` or an
    OSError naming a file (an output that cannot be written) becomes one error line
    and status 2; a closed pipe on stdout is a normal end."""
    try:
        return func(args) or 0
    except BrokenPipeError:
        return 0
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.filename is None:
            raise
        print(f"error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
