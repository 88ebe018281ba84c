"""`tuner <verb>`: argument parsing and dispatch only; the work lives in the library modules.

Each verb is an `add_<verb>(sub)` function in the module of its family (data.py: data, mine; train.py: train,
config; evaluation.py: eval, instruct, calibrate; models.py: tiny-model, score, export, serve) and one entry in
`COMMANDS`; a verb raises `UserError` (or DataError/ValueError/FileNotFoundError) for a user's mistake, which
`main` prints as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from tuner.cli.common import UserError
from tuner.cli.data import add_data, add_mine
from tuner.cli.evaluation import add_calibrate, add_eval, add_instruct
from tuner.cli.models import add_export, add_score, add_serve, add_tiny_model, read_documents
from tuner.cli.train import add_config, add_train

__all__ = ["COMMANDS", "UserError", "build_parser", "main", "read_documents"]

# Each verb registers its parser here; the issue that adds a verb adds one line.
COMMANDS: list[Callable] = [
    add_tiny_model,
    add_score,
    add_data,
    add_mine,
    add_train,
    add_config,
    add_eval,
    add_instruct,
    add_calibrate,
    add_export,
    add_serve,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuner", description="Domain-adapt Qwen3-Reranker with LoRA.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"tuner {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as err:
        # Errors the library raises for bad input carry a message that names the path or field; so do the OS's
        # (FileNotFoundError, NotADirectoryError, FileExistsError, PermissionError, a full disk: "[Errno N] ...: path")
        print(f"tuner {args.command}: error: {err}", file=sys.stderr)
        return 2
