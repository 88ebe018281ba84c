"""Training data for the loop: seeded per-epoch group sampling and the collator that builds prompt batches.

The documents a step sees are a pure function of (seed, epoch, group index): the sampler yields
`(epoch, index)` pairs in a seeded per-epoch order and the dataset draws the positive(s) and the negatives of a
group from a stream seeded by those three numbers. A run resumed from a checkpoint therefore replays exactly
the data the uninterrupted run would have seen, and negatives are resampled every epoch.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from tuner.contract import PromptEncoder
from tuner.data.schema import Group
from tuner.head import collate
from tuner.packing import pack_rows, sorted_chunks

__all__ = ["EpochSampler", "GroupCollator", "GroupDataset", "sample_group"]


def _stream(seed: int, epoch: int, index: int) -> random.Random:
    # An int seed is hashed the same way on every machine and process (unlike hash() of a tuple of strs).
    return random.Random((seed * 1_000_003 + epoch) * 1_000_003 + index)


def sample_group(
    group: Group, group_size: int, seed: int, epoch: int, index: int, positives: int = 1
) -> dict[str, Any]:
    """One training example: the group's query, its positive(s), negatives to `group_size` documents, teacher scores.

    `positives` > 1 draws up to that many distinct positives (columns `0..k-1`, k = min(positives, the group's));
    the rest of the group is negatives. Each positive's `labels` entry is its grade (`group.pos_grades`, else 1):
    the listwise target weighs it by that gain, the one nDCG counts, so a grade-3 document is taught above a grade-1
    one. With `positives` 1 the draw is the one it always was (the same stream, so old runs resume identically).

    Negatives are drawn without replacement. A group with fewer takes all of them and is filled up with
    placeholder slots (an empty document) that `mask` marks False and no loss counts: a batch stays one
    `[groups, group_size]` tensor, and a triplet file's one negative is not weighed 7 times as copies of it
    were. The collator never encodes a placeholder, so it costs no forward pass either.

    Returns:
        `{"query", "instruction", "docs" (positives first), "labels" (grade of each positive, 0 elsewhere),
        "teacher" (list or None), "mask" (None when every slot is a real document, else a list of bools)}`.
    """
    rng = _stream(seed, epoch, index)
    if positives > 1:
        picked = rng.sample(range(len(group.pos)), min(positives, len(group.pos)))
    else:
        picked = [rng.randrange(len(group.pos))]
    need = group_size - len(picked)
    if need and not group.neg:
        raise ValueError(f"group {group.qid or index} has no negatives; group_size {group_size} needs {need}")
    negs = rng.sample(range(len(group.neg)), min(need, len(group.neg)))
    filler = need - len(negs)
    teacher = None
    if group.pos_scores is not None and group.neg_scores is not None:
        teacher = (
            [float(group.pos_scores[p]) for p in picked] + [float(group.neg_scores[j]) for j in negs] + [0.0] * filler
        )
    grades = group.pos_grades or [1] * len(group.pos)
    return {
        "query": group.query,
        "instruction": group.instruction,
        "docs": [group.pos[p] for p in picked] + [group.neg[j] for j in negs] + [""] * filler,
        "labels": [float(grades[p]) for p in picked] + [0.0] * need,
        "teacher": teacher,
        "mask": [True] * (len(picked) + len(negs)) + [False] * filler if filler else None,
    }


class GroupDataset(Dataset):
    """Groups indexed by `(epoch, index)`; see the module docstring."""

    def __init__(self, groups: Sequence[Group], group_size: int, seed: int, positives: int = 1) -> None:
        self.groups = list(groups)
        self.group_size = group_size
        self.seed = seed
        self.positives = positives

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        return sample_group(self.groups[index], self.group_size, self.seed, epoch, index, self.positives)


class EpochSampler(Sampler):
    """A seeded permutation of the groups per epoch, yielding `(epoch, index)`.

    The Trainer calls `set_epoch` at the start of every epoch (also the epoch a resumed run restarts in);
    `TrainLoop` additionally sets it from the trainer state so that the order never depends on which
    wrapper the dataloader ended up in.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        for index in torch.randperm(self.size, generator=g).tolist():
            yield (self.epoch, index)


@dataclass
class GroupCollator:
    """Turns a batch of sampled groups into one flat batch of prompts `[n_groups * group_size]`.

    Keys, by `batching` (the scores are the same each way; `tuner.score_forward.install_score_forward` reads all three):
    - `padded`: `input_ids`, `attention_mask`, `last_index` (one right-padded batch, `tuner.head.collate`);
    - `sorted`: `chunks`, a list of `(indices, padded batch)` of length-sorted prompts, each at most
      `batch_tokens` padded tokens (`tuner.packing.sorted_chunks`);
    - `packed`: `input_ids`, `position_ids`, `row_index`, `last_index`, rows of at most `batch_tokens`
      (`tuner.packing.pack_rows`).
    Always: `group_labels` `[n_groups, group_size]` (each positive's grade, 1 when ungraded, in the first columns,
    0 elsewhere; not `labels`, so that the Trainer does not treat them as token labels), `num_tokens` (real prompt
    tokens, for the FLOP count), and `teacher_scores` when every group has them. When a group has fewer negatives
    than its slots (see `sample_group`): `group_mask` (bool, same shape, False at placeholder slots) and
    `slot_index` (the flat slot of each encoded prompt): placeholders are not encoded, and the trainer scatters
    the prompts' scores back into their slots (a triplet file in groups of 8 would otherwise spend 6 of 8 forward
    passes on them).
    """

    encoder: PromptEncoder
    pad_id: int
    default_instruction: str | None = None
    batching: str = "padded"
    batch_tokens: int = 16384

    def __post_init__(self):
        if self.batching not in ("padded", "sorted", "packed"):
            raise ValueError(f"batching must be padded, sorted or packed, not {self.batching!r}")

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        triples, slots = [], []
        size = len(samples[0]["docs"])
        for g, s in enumerate(samples):
            instruction = s["instruction"] if s["instruction"] is not None else self.default_instruction
            mask = s.get("mask") or [True] * size
            for j, (doc, real) in enumerate(zip(s["docs"], mask, strict=True)):
                if real:
                    triples.append((s["query"], doc, instruction))
                    slots.append(g * size + j)
        ids = self.encoder.encode_many(triples)
        batch: dict[str, Any]
        if self.batching == "packed":
            batch = pack_rows(ids, self.pad_id, row_tokens=self.batch_tokens)
        elif self.batching == "sorted":
            batch = {"chunks": sorted_chunks(ids, self.pad_id, self.batch_tokens)}
        else:
            batch = collate(ids, self.pad_id)
        batch["num_tokens"] = sum(len(x) for x in ids)  # a Python int: reading it never waits on the GPU
        one = [1.0] + [0.0] * (size - 1)  # a sample without labels: its positive in column 0
        batch["group_labels"] = torch.tensor([s.get("labels") or one for s in samples], dtype=torch.float32)
        if any(s.get("mask") is not None for s in samples):  # placeholder slots of short groups (sample_group)
            batch["group_mask"] = torch.tensor([s.get("mask") or [True] * size for s in samples], dtype=torch.bool)
            batch["slot_index"] = torch.tensor(slots, dtype=torch.long)
        if all(s["teacher"] is not None for s in samples):
            batch["teacher_scores"] = torch.tensor([s["teacher"] for s in samples], dtype=torch.float32)
        return batch
