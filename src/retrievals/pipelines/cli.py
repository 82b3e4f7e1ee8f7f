"""What every pipeline's ``main`` does: parse dataclass arguments, run, turn bad input into exit code 2."""

from __future__ import annotations

import difflib
import logging
import sys
from typing import Any, Callable, List, Optional, Sequence

from transformers import HfArgumentParser

from ..data.readers import DataError
from ..files import CorruptFileError, OutputExistsError
from ..training.output_dir import OutputDirError
from ..training.trainer import NonFiniteWeightsError
from ..utils import UsageError

# only these are the user's to fix and shown as one line; anything else is a bug and keeps its traceback
USER_ERRORS = (DataError, UsageError, OutputDirError, FileNotFoundError, OutputExistsError, CorruptFileError,
               NonFiniteWeightsError)


def unknown_flags(unknown: List[str], parser: Any) -> str:
    """The message for arguments no flag takes, with the closest flags for each mistyped one.

    >>> import argparse
    >>> p = argparse.ArgumentParser(); _ = p.add_argument("--train_data"); _ = p.add_argument("--eval_data")
    >>> unknown_flags(["--trian_data", "x"], p)
    'unknown argument(s) --trian_data x: --trian_data: did you mean --train_data?'
    """
    # one spelling per flag: HfArgumentParser adds --train-data beside --train_data
    known = list(dict.fromkeys(o.replace("-", "_").replace("__", "--", 1) for a in parser._actions for o in a.option_strings if o.startswith("--")))
    hints = []
    for arg in unknown:
        if arg.startswith("--"):
            close = difflib.get_close_matches(arg.split("=")[0], known, n=2, cutoff=0.75)
            hints.append(f"{arg.split('=')[0]}: " + (f"did you mean {' or '.join(close)}?" if close else "no such flag"))
    return f"unknown argument(s) {' '.join(unknown)}" + (f": {'; '.join(hints)}" if hints else "; see --help")


def repeated_flags(argv: Sequence[str], parser: Any) -> Optional[str]:
    """The message for a list flag given twice (or under two of its aliases): argparse keeps the last list, so
    ``--models a=X --models b=Y`` evaluated b alone and a left the report without a word. A scalar flag given again
    replaces the earlier value, as argparse documents and scripts use to override a default command.

    >>> import argparse
    >>> p = argparse.ArgumentParser(); _ = p.add_argument("--models", nargs="+"); _ = p.add_argument("--top_k")
    >>> repeated_flags(["--models", "a=x", "--top_k=3", "--top_k", "4", "--models", "b=y"], p)
    '--models is given twice; argparse would keep only the last list: give all its values after one --models.'
    """
    seen = {}
    for arg in argv:
        action = parser._option_string_actions.get(arg.split("=", 1)[0]) if arg.startswith("--") else None
        if action is None or action.nargs not in ("+", "*"):
            continue
        if action.dest in seen:
            first = seen[action.dest]
            named = first if first == arg.split("=", 1)[0] else f"{first} (as {arg.split('=', 1)[0]})"
            return f"{named} is given twice; argparse would keep only the last list: give all its values after one {first}."
        seen[action.dest] = arg.split("=", 1)[0]
    return None


def run_cli(arg_classes: Sequence[type], body: Callable[..., Any], argv: Optional[List[str]] = None) -> int:
    """Parse ``argv`` into ``arg_classes`` and call ``body(*parsed)``; a user error prints
    ``error: <message>`` (naming file, line and field where it can) and returns 2."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    parser = HfArgumentParser(tuple(arg_classes))
    try:
        twice = repeated_flags(sys.argv[1:] if argv is None else argv, parser)
        if twice:
            raise UsageError(twice)
        try:
            *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
        except ValueError as exc:  # transformers' own checks of its flags (--logging_steps 0 with steps logging, ...)
            raise UsageError(str(exc)) from None
        if unknown:  # was transformers' ValueError traceback naming no flag it may have meant
            raise UsageError(unknown_flags(unknown, parser))
        body(*parsed)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
