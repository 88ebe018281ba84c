"""Test helpers: a small BEIR slice (8 medical abstracts, 6 queries, 5 judged) written into a folder."""

from __future__ import annotations

import json

DOCS = {
    "d1": ("Aspirin and heart attacks", "Daily low-dose aspirin lowers the risk of a first heart attack."),
    "d2": ("Statins", "Statins reduce cholesterol and cardiovascular events in older adults."),
    "d3": ("Vitamin D", "Vitamin D supplements do not prevent fractures in healthy adults."),
    "d4": ("Sleep and memory", "Sleep after learning consolidates memories in the hippocampus."),
    "d5": ("Coffee", "Coffee drinking is associated with lower mortality in large cohorts."),
    "d6": ("Exercise and depression", "Aerobic exercise reduces symptoms of mild depression."),
    "d7": ("Malaria vaccine", "The RTS,S vaccine gives partial protection against malaria in children."),
    "d8": ("Gut bacteria", "Gut bacteria influence the efficacy of cancer immunotherapy."),
}
QUERIES = {
    "q1": "Does aspirin prevent heart attacks?",
    "q2": "Do statins lower cholesterol?",
    "q3": "Does sleep help memory?",
    "q4": "Is coffee linked to mortality?",
    "q5": "Does exercise help depression?",
    "q6": "a query without judgements",
}
QRELS = {"q1": {"d1": 1}, "q2": {"d2": 2, "d1": 0}, "q3": {"d4": 1}, "q4": {"d5": 1, "d8": 0}, "q5": {"d6": 1}}


def write_beir(folder, corpus=DOCS, queries=QUERIES, qrels=QRELS, split="test"):
    """A minimal BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv."""
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as f:
        for doc_id, (title, text) in corpus.items():
            f.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as f:
        for qid, text in queries.items():
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    with open(folder / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for qid, judged in qrels.items():
            for doc_id, grade in judged.items():
                f.write(f"{qid}\t{doc_id}\t{grade}\n")
    return folder
