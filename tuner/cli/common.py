"""What every verb module of the CLI shares: the error a user can fix."""

from __future__ import annotations

import argparse

# `--attn-implementation` values: the names a recipe's model.attn_implementation takes (flash_attention_2/3 need
# the flash-attn package)
from tuner.config import ATTN_IMPLEMENTATIONS


class UserError(Exception):
    """An error the user can fix (bad path, bad data, bad option): printed as one line, exit code 2."""


# `--prefix-reuse` values → `Reranker(prefix_reuse=...)`
PREFIX_REUSE = {"off": False, "auto": "auto", "on": True}


def add_scoring_path_args(p) -> None:
    """`--prefix-reuse`, `--packing` and `--attn-implementation`: the `Reranker` fast paths every verb that scores
    can switch on."""
    p.add_argument(
        "--prefix-reuse",
        default="off",
        choices=list(PREFIX_REUSE),
        help="compute each query's shared prompt head once and reuse its KV cache for that query's documents: "
        "auto (when the head is >= 32 tokens and the query has >= 2 documents), on, or off (default); same scores",
    )
    p.add_argument(
        "--packing",
        action="store_true",
        help="several prompts per row, no padding (pays with --attn-implementation flex_attention on a GPU, which "
        "skips the blocks between a row's prompts; sdpa computes and masks them)",
    )
    p.add_argument(
        "--attn-implementation",
        choices=ATTN_IMPLEMENTATIONS,
        help="attention kernel the model is loaded with (default: sdpa); same scores",
    )


def scoring_path_kwargs(args) -> dict:
    """The `Reranker` keyword arguments of `add_scoring_path_args`'s options."""
    return {
        "prefix_reuse": PREFIX_REUSE[args.prefix_reuse],
        "packing": bool(args.packing),
        "attn_implementation": args.attn_implementation,
    }


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse names the flag in its error: "argument --top-k: ...")."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0-65535 (0: any free port)."""
    value = _int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
