"""Ranking metrics: hand-computed values, and agreement with trec_eval (through pytrec_eval) on random runs."""

from __future__ import annotations

import math
import random

import pytest

from tuner.metrics import evaluate_per_query, evaluate_run, mean, parse_metric, ranked_ids


def test_hand_computed_values():
    qrels = {"q": {"a": 2, "b": 0, "c": 1, "z": 1}}  # z is relevant but never retrieved
    run = {"q": [("b", 9.0), ("a", 8.0), ("x", 7.0), ("c", 6.0)]}  # x is unjudged
    got = evaluate_per_query(qrels, run, ["ndcg@3", "mrr@10", "mrr@1", "map@100", "recall@2", "p@4", "p@10"])["q"]
    dcg = 2 / math.log2(3)  # a at rank 2; c at rank 4 is outside the cut
    ideal = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert got["ndcg@3"] == pytest.approx(dcg / ideal)
    assert got["mrr@10"] == pytest.approx(0.5)
    assert got["mrr@1"] == 0.0
    assert got["map@100"] == pytest.approx((1 / 2 + 2 / 4) / 3)  # divided by all 3 relevant, not by the 2 found
    assert got["recall@2"] == pytest.approx(1 / 3)
    assert got["p@4"] == pytest.approx(2 / 4)
    assert got["p@10"] == pytest.approx(2 / 10)  # a short list still divides by k


def test_ties_follow_trec_eval_order():
    # equal scores: trec_eval ranks the larger doc id first, whatever the input order
    assert ranked_ids([("d1", 1.0), ("d3", 1.0), ("d2", 2.0), ("d1", 0.5)]) == ["d2", "d3", "d1"]
    assert ranked_ids({"a": 0.0, "b": 0.0}) == ["b", "a"]
    # a document listed twice keeps its first score, wherever its later copies would rank it
    assert ranked_ids([("a", 1.0), ("b", 2.0), ("a", 3.0)]) == ["b", "a"]
    assert evaluate_run({"q": {"a": 1}}, {"q": [("a", 0.0), ("b", 1.0), ("a", 5.0)]}, ["mrr@10"])["mrr@10"] == 0.5
    qrels = {"q": {"a": 1}}
    assert evaluate_run(qrels, {"q": [("a", 1.0), ("b", 1.0)]}, ["mrr@10"])["mrr@10"] == 0.5


def test_queries_without_relevant_documents_and_missing_queries():
    qrels = {"q1": {"a": 1}, "q2": {"b": 0}, "q3": {"c": 1}}
    run = {"q1": [("a", 1.0)], "q2": [("b", 1.0)], "other": [("a", 1.0)]}
    per_query = evaluate_per_query(qrels, run, ["ndcg@10"])
    assert per_query == {"q1": {"ndcg@10": 1.0}, "q2": {"ndcg@10": 0.0}}  # q3 skipped, "other" unjudged
    assert evaluate_run(qrels, run, ["ndcg@10"], missing="zero")["ndcg@10"] == pytest.approx(1 / 3)
    assert mean({}, ["ndcg@10"]) == {"ndcg@10": 0.0}
    with pytest.raises(ValueError, match="missing must be"):
        evaluate_run(qrels, run, ["ndcg@10"], missing="drop")


def test_metric_names():
    assert parse_metric("nDCG@10") == ("ndcg", 10)
    assert parse_metric("ndcg_cut.10") == ("ndcg", 10)
    assert parse_metric("recip_rank") == ("mrr", None)
    assert parse_metric("P.5") == ("precision", 5)
    for bad in ("ndcg", "recall", "p", "foo@10", "recall@0"):
        with pytest.raises(ValueError):
            parse_metric(bad)


def _random_case(rng: random.Random):
    qrels, run = {}, {}
    for q in range(rng.randint(1, 8)):
        judged = {f"d{rng.randint(0, 60)}": rng.choice([-1, 0, 0, 1, 1, 2, 3]) for _ in range(rng.randint(0, 40))}
        qrels[f"q{q}"] = judged or {"d0": 0}
        # few distinct scores → many ties; ids up to 80 → many unjudged documents
        run[f"q{q}"] = {f"d{rng.randint(0, 80)}": float(rng.randint(0, 5)) for _ in range(rng.randint(1, 120))}
        if rng.random() < 0.3:  # some real-valued scores as well
            run[f"q{q}"] = {d: s + rng.random() for d, s in run[f"q{q}"].items()}
    return qrels, run


PAIRS = {
    "ndcg_cut_10": "ndcg@10",
    "ndcg_cut_5": "ndcg@5",
    "map_cut_100": "map@100",
    "map_cut_10": "map@10",
    "recall_100": "recall@100",
    "recall_10": "recall@10",
    "P_10": "p@10",
    "recip_rank": "mrr",
}


def test_agrees_with_pytrec_eval_on_random_runs():
    pytrec_eval = pytest.importorskip("pytrec_eval")
    rng = random.Random(1234)
    measures = {"ndcg_cut.10", "ndcg_cut.5", "map_cut.100", "map_cut.10", "recall.100", "recall.10", "P.10"}
    worst, checked = 0.0, 0
    for _ in range(200):
        qrels, run = _random_case(rng)
        ref = pytrec_eval.RelevanceEvaluator(qrels, {*measures, "recip_rank"}).evaluate(run)
        ours = evaluate_per_query(qrels, run, [*PAIRS.values(), "mrr@10"])
        assert set(ours) == set(ref)
        # MRR@10 = trec_eval's recip_rank on the run cut to its top 10 (in trec_eval order)
        cut = {q: {d: run[q][d] for d in ranked_ids(run[q])[:10]} for q in run}
        ref10 = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(cut)
        for q in ref:
            for theirs, mine in PAIRS.items():
                worst = max(worst, abs(ref[q][theirs] - ours[q][mine]))
            worst = max(worst, abs(ref10[q]["recip_rank"] - ours[q]["mrr@10"]))
            checked += 1
    assert checked > 500
    assert worst < 1e-6


def test_a_metric_named_twice_is_refused():
    """`tuner eval --metrics ndcg@10 ndcg@10` (or a recipe's eval.metrics) reported the column twice."""
    from tuner.metrics import check_metrics

    assert check_metrics(["ndcg@10", "mrr@10"]) == ["ndcg@10", "mrr@10"]
    with pytest.raises(ValueError, match=r"metric 'NDCG@10' is named twice \(as 'ndcg@10' before\)"):
        check_metrics(["ndcg@10", "mrr@10", "NDCG@10"])
