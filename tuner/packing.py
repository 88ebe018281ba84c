"""Packed rows (no padding) and length-sorted padded chunks: training batches, and `Reranker(packing=True)`'s rows.

Packed rows put several prompts end to end in one row with `position_ids` restarting at 0 for each prompt and
no attention mask. transformers (>= 4.5x, 5.x) reads restarting positions as packed sequences when no mask and
no cache are passed, and builds a block-diagonal causal mask: `flex_attention` then skips the masked blocks,
`sdpa` / `eager` compute them and mask them out (same numbers, more work). Each prompt's computation is the
same as its unpadded computation, so the score at its last token equals `tuner.head.yes_no_logits`.

Both paths project the last token's final-norm hidden state on `tuner.head.live_head_vector` (the contract's
`w_yes − w_no`); no full-vocabulary logits are computed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tuner.head import collate, last_hidden, live_head_vector, project, to_device, unwrap_backbone

__all__ = [
    "chunked_last_hidden",
    "chunked_yes_no_logits",
    "first_fit_rows",
    "pack_rows",
    "packed_last_hidden",
    "packed_yes_no_logits",
    "rows_batch",
    "sorted_chunks",
]


def first_fit_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Prompt indices per row: first-fit with the longest prompts first, rows of at most `capacity` tokens; a
    prompt longer than that gets a row of its own (never split)."""
    rows: list[list[int]] = []
    fill: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = lengths[i]
        for r, used in enumerate(fill):
            if used + n <= capacity:
                rows[r].append(i)
                fill[r] += n
                break
        else:
            rows.append([i])
            fill.append(n)
    return rows


def rows_batch(
    ids: Sequence[Sequence[int]], rows: Sequence[Sequence[int]], pad_id: int, device=None
) -> dict[str, torch.Tensor]:
    """The packed batch of a row layout (`rows`: indices into `ids`, each prompt in exactly one row).

    Returns:
        `input_ids` [rows, len], `position_ids` [rows, len], `row_index` [n] and `last_index` [n] (where prompt
        i's last token sits, in input order); rows are as wide as the fullest one.
    """
    width = max(sum(len(ids[i]) for i in members) for members in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    row_index = torch.empty(len(ids), dtype=torch.long)
    last_index = torch.empty(len(ids), dtype=torch.long)
    for r, members in enumerate(rows):
        start = 0
        for i in members:
            n = len(ids[i])
            input_ids[r, start : start + n] = torch.as_tensor(ids[i], dtype=torch.long)
            positions[r, start : start + n] = torch.arange(n)
            row_index[i], last_index[i] = r, start + n - 1
            start += n
        positions[r, start:] = torch.arange(width - start)  # padding tail: its own segment, starting at 0
    out = {"input_ids": input_ids, "position_ids": positions, "row_index": row_index, "last_index": last_index}
    return dict(zip(out, to_device(list(out.values()), device), strict=True))


def pack_rows(
    ids: Sequence[Sequence[int]], pad_id: int, row_tokens: int | None = None, device=None
) -> dict[str, torch.Tensor]:
    """Pack prompts into rows of at most `row_tokens` tokens (`first_fit_rows`); never split a prompt.

    Args:
        ids: prompt token id lists.
        pad_id: id used to fill the tail of shorter rows (its positions restart at 0, so it is a separate
            "sequence" that no real token attends to).
        row_tokens: row capacity; `None` = one row holding everything. A prompt longer than it gets its own row.
        device: where to put the tensors.

    Returns:
        `rows_batch`'s `input_ids`, `position_ids`, `row_index` and `last_index`.
    """
    if not ids:
        raise ValueError("pack_rows needs at least one prompt")
    lengths = [len(x) for x in ids]
    capacity = row_tokens if row_tokens is not None else sum(lengths)
    return rows_batch(ids, first_fit_rows(lengths, capacity), pad_id, device)


def packed_yes_no_logits(
    model: nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    row_index: torch.Tensor,
    last_index: torch.Tensor,
    yes_id: int,
    no_id: int,
) -> torch.Tensor:
    """Relevance logits [n] (fp32, differentiable) of packed prompts; see `pack_rows` for the inputs.

    No attention mask and `use_cache=False`: that is what makes transformers treat restarting `position_ids`
    as separate sequences.
    """
    h = packed_last_hidden(model, input_ids, position_ids, row_index, last_index)  # [n, hidden]
    return project(h, live_head_vector(model, yes_id, no_id))


def packed_last_hidden(
    model: nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    row_index: torch.Tensor,
    last_index: torch.Tensor,
) -> torch.Tensor:
    """Final-norm hidden state at each packed prompt's last token, shape [n, hidden] (see `pack_rows`)."""
    backbone = unwrap_backbone(model)
    out = backbone(input_ids=input_ids, position_ids=position_ids, use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # [rows, len, hidden]
    return hidden[row_index.to(hidden.device), last_index.to(hidden.device)]


def sorted_chunks(
    ids: Sequence[Sequence[int]], pad_id: int, batch_tokens: int, device=None
) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Length-sorted, right-padded chunks of at most `batch_tokens` padded tokens (rows x longest).

    Returns:
        `[(indices, batch)]`: the input positions of the chunk's prompts and its `tuner.head.collate` batch.
    """
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    chunks, current = [], []
    for i in order:
        # sorted ascending, so the newcomer is the longest: the chunk would be (len+1) x len(ids[i]) tokens
        if current and (len(current) + 1) * len(ids[i]) > batch_tokens:
            chunks.append(current)
            current = []
        current.append(i)
    chunks.append(current)
    return [(torch.as_tensor(c, dtype=torch.long), collate([ids[i] for i in c], pad_id, device)) for c in chunks if c]


Chunks = Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]]  # what `sorted_chunks` returns


def chunked_last_hidden(model: nn.Module, chunks: Chunks) -> torch.Tensor:
    """Final-norm hidden state at each prompt's last token, [n, hidden] in input order, from `sorted_chunks`.

    All chunks' graphs stay alive until the loss's backward; with gradient checkpointing each holds only its
    layer inputs, so the memory is that of one batch without the padding.
    """
    parts = [(idx, last_hidden(model, **batch)) for idx, batch in chunks]
    n = sum(len(idx) for idx, _ in parts)
    first = parts[0][1]
    out = first.new_empty((n, first.shape[-1]))
    for idx, h in parts:
        out = out.index_copy(0, idx.to(out.device), h)
    return out


def chunked_yes_no_logits(model: nn.Module, chunks: Chunks, yes_id: int, no_id: int) -> torch.Tensor:
    """Logits [n] (fp32, differentiable) in input order from `sorted_chunks`; the head of `yes_no_logits`."""
    return project(chunked_last_hidden(model, chunks), live_head_vector(model, yes_id, no_id))
