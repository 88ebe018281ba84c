"""A deliberately plain scorer that follows the Qwen3-Reranker model card's transformers recipe step by step.

It is the yardstick for parity tests and benchmarks, not a fast path: it tokenizes each body with the
tokenizer's own right truncation to `max_length - prefix - suffix`, wraps it in prefix and suffix, left-pads
the batch, runs the full causal LM (full-vocabulary logits at every position), takes the last position's
`[no, yes]` logits and returns `exp(log_softmax(...))[yes]`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tuner.contract import DEFAULT_MAX_LENGTH, PREFIX, SUFFIX, Document, render_body


@torch.inference_mode()
def reference_scores(
    model,
    tokenizer,
    pairs: Sequence[tuple[str, Document, str | None]],
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = 16,
    return_logits: bool = False,
) -> list[float]:
    """Model-card scores (probability of "yes") for (query, document, instruction) triples, in input order.

    With `return_logits`, returns `l_yes − l_no` from the same full-vocabulary logits instead.
    """
    yes_id = tokenizer.convert_tokens_to_ids("yes")
    no_id = tokenizer.convert_tokens_to_ids("no")
    prefix_ids = tokenizer.encode(PREFIX, add_special_tokens=False)
    suffix_ids = tokenizer.encode(SUFFIX, add_special_tokens=False)
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    out: list[float] = []
    try:
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            bodies = [render_body(q, d, i) for q, d, i in chunk]
            enc = tokenizer(
                bodies,
                padding=False,
                truncation="longest_first",
                return_attention_mask=False,
                max_length=max_length - len(prefix_ids) - len(suffix_ids),
                add_special_tokens=False,
            )
            enc["input_ids"] = [prefix_ids + ids + suffix_ids for ids in enc["input_ids"]]
            batch = tokenizer.pad(enc, padding=True, return_tensors="pt")
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(**batch).logits[:, -1, :]  # [batch, vocab], the full vocabulary
            two = torch.stack([logits[:, no_id], logits[:, yes_id]], dim=1).float()
            if return_logits:
                out.extend((two[:, 1] - two[:, 0]).tolist())
            else:
                out.extend(torch.log_softmax(two, dim=1)[:, 1].exp().tolist())
    finally:
        tokenizer.padding_side = old_side
    return out
