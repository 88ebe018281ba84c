"""The training row every loader produces: one query with its positives and negatives."""

from __future__ import annotations

from dataclasses import dataclass, field

from tuner.contract import Document


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
        pos_grades: graded relevance of each positive (integers >= 1, same length as pos) when the source had
            grades (labeled pairs with integer labels above 1, BEIR qrels, a row's `pos_grades`); None → every
            positive is grade 1. Ranking metrics use them as gains (nDCG); training weighs by them only with
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
