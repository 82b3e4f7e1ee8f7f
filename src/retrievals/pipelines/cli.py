"""What every pipeline's ``main`` does: parse dataclass arguments, run, turn bad input into exit code 2."""

from __future__ import annotations

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


def run_cli(arg_classes: Sequence[type], body: Callable[..., Any], argv: Optional[List[str]] = None) -> int:
    """Parse ``argv`` into ``arg_classes`` and call ``body(*parsed)``; a user error prints
    ``error: <message>`` (naming file, line and field where it can) and returns 2."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    try:
        parsed = HfArgumentParser(tuple(arg_classes)).parse_args_into_dataclasses(args=argv)
        body(*parsed)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
