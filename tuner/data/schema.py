"""The training row every loader produces: one query with its positives and negatives."""

from __future__ import annotations

from dataclasses import dataclass, field

from tuner.contract import Document

# The largest relevance grade read anywhere (a pair's label, a row's `pos_grades`, a BEIR qrels score). Grades are
# gains: nDCG adds them linearly (as trec_eval does, whose cross-check in `tuner eval` needs memory linear in the
# largest grade) and the listwise target weighs a positive by its grade in fp32. Real collections grade 0-4, some
# 0-10 or 0-100; 100 keeps all of them, and even a gain of 2**grade would stay finite in fp32 and bf16 (2**100 is
# below their ~3.4e38), while a label of 3e9 or 1e300 is a mistake that would exhaust memory or turn the loss NaN.
MAX_GRADE = 100
# The largest teacher score, in absolute value (`pos_scores` / `neg_scores`: logits, probabilities, BM25 or
# similarity scores are all far below it). The distill loss takes a softmax of them in fp32, where 1e300 is inf and
# the loss NaN at the first step (which reads as a learning-rate problem, not a data one).
MAX_TEACHER_SCORE = 1e6


@dataclass
class Group:
    """One query with judged documents (FlagEmbedding's field names).

    Attributes:
        query: query text.
        pos: relevant documents (strings or `{"title", "text"}`).
        neg: non-relevant documents (mined or judged).
        instruction: per-sample task instruction; `None` → the recipe's or the contract's default.
        pos_scores / neg_scores: optional teacher scores (same lengths as pos / neg), for distillation.
        qid: query id when the group comes from a BEIR collection.
        pos_grades: graded relevance of each positive (integers from 1 to `MAX_GRADE`, same length as pos) when the
            source had grades (labeled pairs with integer labels above 1, BEIR qrels, a row's `pos_grades`); None →
            every positive is grade 1. Ranking metrics use them as gains (nDCG); training weighs by them only with
            `data.positives_per_group` > 1 and a listwise target (listwise, or distill's hard-label part).
    """

    query: str
    pos: list[Document]
    neg: list[Document] = field(default_factory=list)
    instruction: str | None = None
    pos_scores: list[float] | None = None
    neg_scores: list[float] | None = None
    qid: str | None = None
    pos_grades: list[int] | None = None

    def to_json(self) -> dict:
        """The JSONL row form (keys with no value are left out)."""
        row = {"query": self.query, "pos": self.pos, "neg": self.neg}
        for key in ("instruction", "pos_scores", "neg_scores", "qid", "pos_grades"):
            value = getattr(self, key)
            if value is not None:
                row[key] = value
        return row
