"""Evaluator on a tiny model and a small BEIR slice written into tmp_path."""

from __future__ import annotations

import json

import pytest
import torch

from tuner.evaluate import Evaluator, first_stage_run, sample_queries
from tuner.metrics import evaluate_run

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


@pytest.fixture(scope="module")
def beir_dir(tmp_path_factory):
    return write_beir(tmp_path_factory.mktemp("beir") / "mini")


@pytest.fixture(scope="module")
def evaluator(beir_dir):
    return Evaluator.from_beir(beir_dir, "test", candidates="bm25", top_k=5, show_progress=False)


def test_first_stage_is_the_cut_candidates(evaluator, beir_dir):
    from tuner.data.beir import load_beir

    data = load_beir(beir_dir, "test")
    run = first_stage_run(data.corpus, data.queries, "bm25", top_k=5)
    assert evaluator.qids == ["q1", "q2", "q3", "q4", "q5"]
    assert all(len(evaluator.candidates[q]) == 5 for q in evaluator.qids)
    expected = evaluate_run(data.qrels, run, missing="zero")
    assert evaluator.first_stage_metrics() == pytest.approx(expected, abs=1e-12)
    assert evaluator.first_stage_metrics()["ndcg@10"] > 0.5  # BM25 finds the obvious matches


def test_reranked_scores_are_the_rerankers_logits(evaluator, tiny_reranker):
    result = evaluator.evaluate(tiny_reranker, label="tiny")
    assert result.pairs == 25 and result.label == "tiny"
    docs = evaluator.candidates["q3"]
    logits = tiny_reranker.score(QUERIES["q3"], [evaluator.corpus[d] for d in docs], normalize=False)
    by_doc = dict(zip(docs, logits, strict=True))
    ranked = result.run["q3"]
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
    for doc_id, score in ranked:
        assert score == pytest.approx(by_doc[doc_id], abs=1e-5)
    # the metrics are those of the reranked run; a second (cached) call gives the same figures
    assert result.metrics == pytest.approx(evaluate_run(evaluator.qrels, result.run), abs=1e-12)
    assert evaluator(tiny_reranker) == pytest.approx(result.metrics, abs=1e-9)
    assert set(result.metrics) == {"ndcg@10", "mrr@10", "map@100", "recall@100"}


def test_bare_model_in_training_mode(evaluator, tiny_reranker):
    model, tok = tiny_reranker.model, tiny_reranker.tokenizer
    model.train()
    try:
        got = evaluator(model, tok)
        assert model.training  # restored after evaluation
    finally:
        model.eval()
    assert got == pytest.approx(evaluator(tiny_reranker), abs=1e-9)
    with pytest.raises(TypeError):
        evaluator(model)


def test_instruction_changes_scores(evaluator, tiny_reranker):
    default = evaluator.evaluate(tiny_reranker)
    none = evaluator.evaluate(tiny_reranker, instruction="")
    assert none.info["instruction"] == ""
    assert default.run["q1"] != none.run["q1"]


def test_base_is_the_disabled_adapter(evaluator, tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    from tuner.scoring import Reranker

    base = Reranker.from_pretrained(tiny_model_dir, device="cpu", dtype="float32")
    before = evaluator.evaluate(base)
    torch.manual_seed(0)
    peft_model = get_peft_model(base.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # B starts at zero; a non-zero B makes the adapter change scores
            torch.nn.init.normal_(param, std=0.5)
    tuned = Reranker(peft_model, base.tokenizer)
    after = evaluator.evaluate(tuned)
    with peft_model.disable_adapter():
        disabled = evaluator.evaluate(tuned)
    for q in evaluator.qids:
        assert [d for d, _ in disabled.run[q]] == [d for d, _ in before.run[q]]
        assert [s for _, s in disabled.run[q]] == pytest.approx([s for _, s in before.run[q]], abs=1e-5)
    assert any(after.run[q] != before.run[q] for q in evaluator.qids)


def test_bad_candidates_and_sampling():
    with pytest.raises(ValueError, match="not in the corpus"):
        Evaluator({"q": "x"}, {"a": "doc"}, {"q": {"a": 1}}, {"q": [("zz", 1.0)]})
    with pytest.raises(ValueError, match="no query"):
        Evaluator({"q": "x"}, {"a": "doc"}, {"other": {"a": 1}}, {})
    ev = Evaluator({"q": "x", "r": "y"}, {"a": "doc"}, {"q": {"a": 1}, "r": {"a": 1}}, {"q": [("a", 1.0)]})
    assert ev.first_stage_metrics()["ndcg@10"] == pytest.approx(0.5)  # r has no candidates: 0
    assert sample_queries(list("abcdef"), 3, seed=0) == sample_queries(list("abcdef"), 3, seed=0)
    assert len(sample_queries(list("abcdef"), 3)) == 3 and sample_queries(list("ab"), None) == ["a", "b"]
