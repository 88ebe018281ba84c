"""Build the general relevance groups that pretrain the tiny base reranker (models/tiny-reranker).

    python scripts/make_base_data.py --out runs/base-data.jsonl

Sources (bundled collections other than SciFact; SciFact's queries, qrels and corpus are never read):
  * inverse cloze (ICT): a sentence of a passage as query, the passage as positive; the sentence is removed
    from the passage half of the time (topical match) and kept otherwise (exact lexical match);
  * title → text where a collection has real titles (CISI);
  * CISI's judged queries (real relevance judgments, library science).
Negatives: BM25 (`tuner.retrieval.BM25`) candidates of the same query in the same corpus, source document and
judged positives excluded, plus one random document of the corpus (an easy negative helps a model that starts
from random weights find the gradient). Each group also carries BM25 teacher scores (`pos_scores`,
`neg_scores`) for optional distillation. Medline's queries and Cranfield's queries are not used: Medline's
judged queries are the development set of `train_tiny_base.py`, Cranfield's the demo's out-of-domain check.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's `tuner`, not an installed copy

from tuner.data.beir import load_beir
from tuner.data.groups import write_groups
from tuner.data.schema import Group
from tuner.retrieval import BM25

SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# Collections whose corpus text is used; (name, use judged queries for training).
SOURCES = (("medline", False), ("cisi", True), ("cranfield", False))


def sentences(text: str, min_words: int = 5, max_words: int = 40) -> list[str]:
    """Sentences of `text` with a usable query length."""
    out = []
    for s in SENTENCE_END.split(text):
        n = len(s.split())
        if min_words <= n <= max_words:
            out.append(s.strip())
    return out


def bm25_scores(index: BM25, query: str, doc_ids: list[str]) -> list[float]:
    """BM25 score of `query` for each listed document of the index (0 when none of its terms match)."""
    import bm25s

    tokens = bm25s.tokenize([query], stopwords="en", stemmer=index._stemmer, show_progress=False, return_ids=False)
    scores = index.index.get_scores(tokens[0])
    pos = {d: i for i, d in enumerate(index.doc_ids)}
    return [float(scores[pos[d]]) for d in doc_ids]


def strip_title(doc: dict) -> str:
    """Document text without a leading copy of its title (Cranfield repeats the title in the text)."""
    title, text = (doc.get("title") or "").strip(), doc.get("text") or ""
    if title and text.lower().startswith(title.lower()):
        text = text[len(title) :].strip()
    return text


def build_groups(
    data_root: Path,
    shared_root: Path | None,
    ict_per_doc: int = 2,
    num_hard: int = 3,
    num_random: int = 1,
    depth: int = 30,
    seed: int = 0,
) -> list[Group]:
    """Pretraining groups from every source collection (see module docstring)."""
    rng = random.Random(seed)
    groups: list[Group] = []
    for name, use_qrels in SOURCES:
        folder = data_root / name
        if not folder.is_dir() and shared_root is not None:
            folder = shared_root / name
        beir = load_beir(folder, "test")
        corpus = beir.corpus
        ids = [d for d in corpus if strip_title(corpus[d])]  # Cranfield has two empty documents
        index = BM25({d: corpus[d] for d in ids})
        index_ids = set(ids)
        # (query, positive doc id, positive text, doc ids that must not be negatives)
        items: list[tuple[str, str, str, set[str]]] = []
        for doc_id in ids:
            doc = corpus[doc_id]
            text = strip_title(doc)
            title = (doc.get("title") or "").strip()
            if title and len(title.split()) >= 3 and text:
                items.append((title, doc_id, text, {doc_id}))
            # sentences from the start of the passage, so they survive document truncation
            sents = sentences(text)[:6]
            if len(sents) < 2:
                continue
            for s in rng.sample(sents, min(ict_per_doc, len(sents))):
                pos_text = text if rng.random() < 0.5 else text.replace(s, " ").strip()
                items.append((s, doc_id, pos_text, {doc_id}))
        if use_qrels:
            for qid, judged in beir.qrels.items():
                positives = {d for d, rel in judged.items() if rel > 0 and d in index_ids}
                for d in sorted(positives):
                    items.append((beir.queries[qid], d, strip_title(corpus[d]), positives))
        run = index.search({str(i): q for i, (q, *_rest) in enumerate(items)}, k=depth)
        for i, (query, doc_id, pos_text, exclude) in enumerate(items):
            cands = [d for d, score in run[str(i)] if score > 0 and d not in exclude]
            hard = rng.sample(cands, min(num_hard, len(cands)))
            easy = [d for d in rng.sample(ids, num_random + len(exclude)) if d not in exclude and d not in hard]
            neg_ids = hard + easy[:num_random]
            if not neg_ids:
                continue
            pos_doc = {"title": "", "text": pos_text}
            teacher = bm25_scores(index, query, [doc_id, *neg_ids])
            groups.append(
                Group(
                    query=query,
                    pos=[pos_doc],
                    neg=[{"title": "", "text": strip_title(corpus[d])} for d in neg_ids],
                    pos_scores=teacher[:1],
                    neg_scores=teacher[1:],
                    qid=f"{name}:{i}",
                )
            )
        print(f"{name}: {len(items)} groups from {len(ids)} documents")
    rng.shuffle(groups)
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/base-data.jsonl", help="groups JSONL to write")
    parser.add_argument("--data", default="data", help="folder with the bundled BEIR collections")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    groups = build_groups(Path(args.data), None, seed=args.seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_groups(groups, args.out)
    print(f"wrote {len(groups)} groups to {args.out}")


if __name__ == "__main__":
    main()
