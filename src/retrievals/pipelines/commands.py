"""The ``retrievals`` command: ``retrievals embed|rerank|retrieve|build-hn|evaluate|serve|demo ARGS``.

Each subcommand is exactly ``python -m retrievals.pipelines.<name> ARGS`` (which keeps working, under
``torchrun`` too): the same flags, the same exit codes.
"""

from __future__ import annotations

import importlib
import sys
from typing import List, Optional

COMMANDS = {
    "embed": ("embed", "train an embedder, or encode texts with one"),
    "rerank": ("rerank", "train a reranker (cross-encoder, colbert, llm)"),
    "retrieve": ("retrieve", "retrieve with an index and write a TREC run"),
    "build-hn": ("build_hn", "mine hard negatives for training data"),
    "evaluate": ("evaluate", "evaluate models on a dataset and write a report"),
    "serve": ("serve", "serve an embedder and/or a reranker over HTTP"),
    "demo": ("demo", "fine-tune MiniLM on AIA-BDE and print held-out metrics before and after"),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: retrievals COMMAND [ARGS ...]   (retrievals COMMAND --help for its flags)", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:
        from .. import __version__

        print(f"retrievals {__version__}")
        return 0
    if argv[:1] == ["help"] and len(argv) > 1:  # "retrievals help retrieve" is "retrievals retrieve --help"
        argv = [argv[1], "--help"]
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name = argv[0].replace("_", "-")
    if name not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"retrievals.pipelines.{COMMANDS[name][0]}")
    program = sys.argv[0]
    sys.argv[0] = f"retrievals {name}"  # argparse names the program from it: its usage line reads as typed
    try:
        return int(module.main(argv[1:]) or 0)
    finally:
        sys.argv[0] = program


if __name__ == "__main__":
    sys.exit(main())
