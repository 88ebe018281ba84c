"""What every verb module of the CLI shares: the error a user can fix."""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix (bad path, bad data, bad option): printed as one line, exit code 2."""


# `--prefix-reuse` values → `Reranker(prefix_reuse=...)`
PREFIX_REUSE = {"off": False, "auto": "auto", "on": True}


# `--attn-implementation` values: transformers' names (flash_attention_2 needs the flash-attn package)
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flex_attention", "flash_attention_2")


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
