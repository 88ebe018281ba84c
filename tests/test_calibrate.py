"""Platt scaling: recovery on synthetic logits, hand-computed ECE / log loss, and the calibration (and instruction)
being picked up by `Reranker`, `tuner export` and `tuner serve`."""

from __future__ import annotations

import json
import math

import httpx
import numpy as np
import pytest
from exporting import make_run
from test_serve import running

from tuner.calibrate import (
    apply_calibration,
    calibration_metrics,
    expected_calibration_error,
    fit_platt,
    log_loss,
    reliability_bins,
)
from tuner.cli import main
from tuner.contract import DEFAULT_INSTRUCTION
from tuner.export import export
from tuner.instruct import apply_meta
from tuner.scoring import Reranker
from tuner.serve import create_app

QUERY = "what produces lift on a wing?"
DOCS = ["Lift comes from pressure differences.", "Bananas are rich in potassium.", "Engines burn fuel.", "Wings."]
CALIBRATION = {"temperature": 1.7, "bias": -0.4}
INSTRUCTION = "Given an engineering question, find the passage that answers it"


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ------------------------------------------------------------------------------------------------ pure math
@pytest.mark.parametrize(("temperature", "bias"), [(2.5, -0.7), (0.5, 1.2)])
def test_fit_recovers_known_temperature_and_bias_within_5_percent(temperature, bias):
    rng = np.random.default_rng(0)
    logits = rng.normal(1.0, 3.0, size=100_000)
    labels = (rng.random(logits.size) < 1.0 / (1.0 + np.exp(-(logits / temperature + bias)))).astype(float)
    t, b = fit_platt(logits, labels)
    assert t == pytest.approx(temperature, rel=0.05)
    assert b == pytest.approx(bias, rel=0.05)
    # the plain fit is the likelihood optimum: it beats the true parameters (in-sample) and the identity; Platt's
    # targets move it by about 1/n
    t0, b0 = fit_platt(logits, labels, smooth=False)
    assert log_loss(logits / t0 + b0, labels) <= log_loss(logits / temperature + bias, labels) + 1e-12
    assert log_loss(logits / t + b, labels) < log_loss(logits, labels)
    assert (t, b) == pytest.approx((t0, b0), rel=1e-3) and (t, b) != (t0, b0)


def test_fit_needs_both_labels_and_keeps_a_positive_slope():
    with pytest.raises(ValueError, match="positive and one negative"):
        fit_platt([0.1, 0.2], [1, 1])
    # anti-correlated scores: the slope stays at its positive floor instead of reversing the ranking
    t, _ = fit_platt([-2.0, -1.0, 1.0, 2.0], [1, 1, 0, 0])
    assert t > 0


def test_logits_that_are_all_equal_fit_the_base_rate():
    """A scorer that gives every pair the same logit (a broken or saturated model): the fit is finite and gives
    that logit the positive rate (of Platt's targets: (1 + 1) / (1 + 2) for the positive, 1 / (3 + 2) for the
    three negatives; 0.25 for the plain fit), instead of dividing by a zero spread."""
    t, b = fit_platt([2.0] * 4, [1, 0, 0, 0])
    assert math.isfinite(t) and math.isfinite(b)
    assert _sigmoid(2.0 / t + b) == pytest.approx((2 / 3 + 3 / 5) / 4, abs=1e-4)
    t, b = fit_platt([2.0] * 4, [1, 0, 0, 0], smooth=False)
    assert _sigmoid(2.0 / t + b) == pytest.approx(0.25, abs=1e-4)


def test_logits_that_separate_the_labels_get_a_finite_fit_bounded_by_platts_targets():
    """Easy dev pairs, every positive far above every negative: the plain maximum-likelihood slope has no finite
    optimum (a 0/1 step that the report would call perfectly calibrated); Platt's targets give a finite one whose
    probabilities stay within 1 / (N- + 2) and (N+ + 1) / (N+ + 2), and the report says the pairs are easy."""
    from tuner.calibrate import fit_warnings

    rng = np.random.default_rng(0)
    logits = np.concatenate([rng.normal(6.0, 1.0, 18), rng.normal(-6.0, 1.0, 36)])
    labels = np.array([1] * 18 + [0] * 36)
    t, b = fit_platt(logits, labels)
    probs = 1.0 / (1.0 + np.exp(-(logits / t + b)))
    assert 0.5 < t < 50 and probs.max() < 0.99 and probs.min() > 0.005
    assert probs[labels == 1].mean() == pytest.approx(19 / 20, abs=0.03)
    assert probs[labels == 0].mean() == pytest.approx(1 / 38, abs=0.02)
    assert fit_platt(logits, labels, smooth=False)[0] < t / 5  # the plain fit runs towards a step
    easy = fit_warnings(18, 36, t, 0.0, separated=True)
    assert len(easy) == 2 and easy[1].startswith("every positive pair scores above every negative one")
    assert fit_warnings(18, 36, t, 0.0) == easy[:1]


def test_ece_and_log_loss_on_hand_computed_values():
    # 15 bins: 0.1 → bin 1, 0.2 → bin 3, 0.9 → bin 13, 0.95 → bin 14; each alone: |0.1-0|+|0.2-1|+|0.9-1|+|0.95-1|
    assert expected_calibration_error([0.1, 0.2, 0.9, 0.95], [0, 1, 1, 1]) == pytest.approx(1.05 / 4)
    # two in one bin (13): |mean 0.91 − fraction 0.5|
    assert expected_calibration_error([0.9, 0.92], [1, 0]) == pytest.approx(0.41)
    bins = reliability_bins([1.0, 0.0], [1, 0])
    assert len(bins) == 15 and bins[-1]["count"] == 1 and bins[0]["count"] == 1  # p = 1.0 is in the last bin
    assert log_loss([0.0, 0.0], [1, 0]) == pytest.approx(math.log(2))
    assert log_loss([1000.0, -1000.0], [1, 0]) == pytest.approx(0.0)  # computed on logits: no log(0)
    metrics = calibration_metrics([0.0], [1])
    assert metrics["brier"] == pytest.approx(0.25) and metrics["ece"] == pytest.approx(0.5)


def test_calibration_is_monotone_so_the_ranking_never_changes():
    logits = np.array([-3.0, 2.5, 0.1, 7.0, -0.2])
    probs = apply_calibration(logits, 3.0, -1.5)
    assert list(np.argsort(-probs)) == list(np.argsort(-logits))
    assert probs[0] == pytest.approx(_sigmoid(-3.0 / 3.0 - 1.5))


# ------------------------------------------------------------------------------- picked up downstream
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir):
    """A training run whose adapter got a calibration and an instruction applied (as the CLIs do)."""
    run = make_run(tmp_path_factory.mktemp("run"), tiny_model_dir)
    apply_meta(run, {"calibration": CALIBRATION, "instruction": INSTRUCTION})
    return run


def _check_reranker(reranker: Reranker) -> list[float]:
    """The loaded reranker uses the applied instruction and calibration; returns its probabilities for DOCS."""
    assert reranker.instruction == INSTRUCTION and reranker.calibration == CALIBRATION
    raw = reranker.score(QUERY, DOCS, normalize=False)
    assert raw == pytest.approx(reranker.score(QUERY, DOCS, instruction=INSTRUCTION, normalize=False), abs=1e-6)
    probs = reranker.score(QUERY, DOCS)
    assert probs == pytest.approx([_sigmoid(x / 1.7 - 0.4) for x in raw], abs=1e-9)
    assert [r["index"] for r in reranker.rank(QUERY, DOCS)] == sorted(range(len(DOCS)), key=lambda i: -raw[i])
    return probs


def test_reranker_export_and_server_pick_up_instruction_and_calibration(run_dir, tmp_path):
    adapter = Reranker.from_pretrained(run_dir / "adapter", device="cpu", dtype="float32")
    expected = _check_reranker(adapter)
    out = tmp_path / "export"
    report = export(run_dir, out, formats=["seq-cls"], device="cpu")
    assert report["passed"]
    meta = json.loads((out / "tuner.json").read_text())
    assert meta["instruction"] == INSTRUCTION and meta["calibration"] == CALIBRATION
    loaded = Reranker.from_pretrained(out, device="cpu", dtype="float32")
    assert _check_reranker(loaded) == pytest.approx(expected, abs=1e-5)
    app = create_app(loaded, model_name="tiny")
    with running(app) as (url, _, _), httpx.Client(base_url=url, timeout=30) as client:
        body = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}).json()
        served = {r["index"]: r["relevance_score"] for r in body["results"]}
        assert served == pytest.approx(dict(enumerate(expected)), abs=1e-5)
        scores = client.post("/score", json={"queries": QUERY, "documents": DOCS}).json()["data"]
        assert [x["score"] for x in scores] == pytest.approx(expected, abs=1e-5)


def test_a_calibration_and_instruction_applied_after_export_reach_the_card_template_health_and_vllm_line(
    tmp_path, tiny_model_dir, capsys
):
    """`tuner calibrate --apply EXPORT` after the export: the model card gives the new one (it kept the
    export-time text), `/health` reports it, and `serve --engine vllm` warns that vLLM's scores
    are the uncalibrated sigmoid (they differed from tuner's without a word). An instruction applied after export
    reaches the export's chat template (it stayed on the old one, so sentence-transformers, transformers and
    `vllm serve --chat-template` scored with another instruction than tuner), and the card's parity section says
    what its figures were measured with."""
    import torch
    from exporting import RUN_INSTRUCTION
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer

    from tuner.chat_template import build_chat_template, pair_messages
    from tuner.contract import render_prompt
    from tuner.export import PROBES

    run = make_run(tmp_path / "run", tiny_model_dir)
    out = tmp_path / "export"
    assert export(run, out, formats=["seq-cls"], device="cpu")["passed"]
    assert "sigmoid(logit / 2.0 + 0.25)" in (out / "README.md").read_text()  # make_run's calibration
    apply_meta(out, {"calibration": CALIBRATION, "instruction": INSTRUCTION})
    card = (out / "README.md").read_text()
    assert "Calibration (tuner only):** tuner's probability is sigmoid(logit / 1.7 + -0.4)" in card
    assert json.dumps(INSTRUCTION) in card and "other engines' relevance = sigmoid(logit)" in card
    ours = Reranker.from_pretrained(out, device="cpu", dtype="float32")
    # the template vLLM is given and the one transformers loads render the new instruction, as tuner scores
    assert (out / "chat_template.jinja").read_text() == build_chat_template(INSTRUCTION)
    rendered = AutoTokenizer.from_pretrained(out).apply_chat_template(pair_messages(QUERY, DOCS[0]), tokenize=False)
    assert rendered == render_prompt(QUERY, DOCS[0], INSTRUCTION)
    pairs = [(QUERY, doc) for doc in DOCS]
    st = CrossEncoder(str(out), device="cpu").predict(pairs, activation_fn=torch.nn.Identity()).tolist()
    assert st == pytest.approx(ours.score(QUERY, DOCS, normalize=False), abs=1e-4)
    assert st != pytest.approx(ours.score(QUERY, DOCS, instruction=RUN_INSTRUCTION, normalize=False), abs=1e-4)
    # the card's parity section: the template row is a check of the regenerated template, and it says so
    parity = json.loads((out / "tuner.json").read_text())["parity"]
    assert parity["template"]["prompt_strings_equal"] == parity["template"]["token_ids_equal"] == len(PROBES)
    assert (
        parity["instruction_changed"]["from"] == RUN_INSTRUCTION and parity["instruction_changed"]["to"] == INSTRUCTION
    )
    assert f"changed after export (on {parity['instruction_changed']['at']}) from {json.dumps(RUN_INSTRUCTION)}" in card
    assert "regenerated for the new default and checked again" in card
    app = create_app(ours, model_name="tiny")
    with running(app) as (url, _, _), httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/health").json()["calibration"] == CALIBRATION
    assert main(["serve", str(out), "--engine", "vllm"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("vllm serve ")
    assert "warning: vLLM returns sigmoid(logit), not this export's calibrated probability" in captured.err
    # back to the export's own instruction: the export-time statement holds again
    apply_meta(out, {"instruction": RUN_INSTRUCTION, "calibration": CALIBRATION})
    assert (out / "chat_template.jinja").read_text() == build_chat_template(RUN_INSTRUCTION)
    assert "instruction_changed" not in json.loads((out / "tuner.json").read_text())["parity"]
    assert "changed after export" not in (out / "README.md").read_text()


def test_cli_calibrate_writes_report_and_applies(tmp_path, tiny_model_dir):
    rows = []
    for n in range(12):
        rows.append({"query": f"question {n} about wings", "pos": [f"wing fact {n}"], "neg": DOCS[1:3]})
    data = tmp_path / "dev.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    target = tmp_path / "model"
    target.mkdir()
    for f in tiny_model_dir.iterdir():
        (target / f.name).symlink_to(f)
    (target / "tuner.json").write_text(json.dumps({"instruction": "keep me"}))
    out = tmp_path / "out"
    argv = ["calibrate", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out), "--apply", str(target)]
    assert main(argv) == 0
    summary = json.loads((out / "calibration.json").read_text())
    assert summary["pairs"] == 36 and summary["positives"] == 12
    assert summary["after"]["log_loss"] <= summary["before"]["log_loss"] + 1e-9  # the fit minimizes it
    assert "15 equal-width bins" in summary["binning"] and len(summary["reliability_after"]) == 15
    assert (out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ECE (15 equal-width bins)" in (out / "report.md").read_text()
    # 12 positives: the report and the summary say the fit is rough
    assert summary["warnings"][0].startswith("only 12 positive pairs: the fit is rough")
    assert "> **Warning:** only 12 positive pairs" in (out / "report.md").read_text()
    applied = json.loads((target / "tuner.json").read_text())
    assert applied["instruction"] == "keep me"
    # what it was fitted with: the model's default instruction (tiny_model_dir has none) and token budget
    fitted = {"temperature": summary["temperature"], "bias": summary["bias"], "instruction": DEFAULT_INSTRUCTION}
    assert applied["calibration"] == {**fitted, "max_length": 8192} == summary["calibration"]
    # it was applied to a model whose default instruction differs: said, in the report and the summary
    assert any("the calibration was fitted with instruction" in w and "'keep me'" in w for w in summary["warnings"])
    loaded = Reranker.from_pretrained(target, device="cpu", dtype="float32")
    raw = loaded.score(QUERY, DOCS, normalize=False)
    t, b = summary["temperature"], summary["bias"]
    with pytest.warns(UserWarning, match="fitted with the instruction 'Given a web search .*', not 'keep me'"):
        assert loaded.score(QUERY, DOCS) == pytest.approx([_sigmoid(x / t + b) for x in raw], abs=1e-9)


def test_data_without_both_labels_fails_before_scoring(tmp_path, monkeypatch, capsys):
    """Only negatives or only positives in the whole file: one line with the counts, before any model loads."""
    from tuner import eval_run
    from tuner.cli import main

    monkeypatch.setattr(eval_run, "load_reranker", lambda *a, **k: pytest.fail("scored before the labels check"))
    negatives = tmp_path / "neg.jsonl"
    negatives.write_text('{"query": "q", "document": "d", "label": 0}\n{"query": "q", "document": "e", "label": 0}\n')
    positives = tmp_path / "pos.jsonl"
    positives.write_text('{"query": "q", "pos": ["a", "b"]}\n')
    for data, counts in ((negatives, "0 positive and 2 negative"), (positives, "2 positive and 0 negative")):
        argv = ["calibrate", "--model", str(tmp_path), "--data", str(data), "--out", str(tmp_path / "out")]
        assert main(argv) == 2
        assert f"{data}: {counts} pairs; calibration needs both" in capsys.readouterr().err


def test_every_labeled_pair_is_calibrated_on_queries_with_only_negatives_or_only_positives_included(
    tmp_path, monkeypatch
):
    """A query without a positive label used to be left out (as training must), dropping 46% of one dev file's
    pairs: the negatives that carry the base rate of "nothing relevant", so the fitted probabilities came out too
    high. Calibration counts every labeled pair."""
    from tuner import eval_run

    monkeypatch.setattr(eval_run, "load_reranker", lambda *a, **k: Unrelated())
    rows = [{"query": f"question {n}", "pos": [f"wing fact {n}"], "neg": [f"banana {n}"]} for n in range(10)]
    rows += [{"query": "nothing relevant", "document": f"engine {n}", "label": 0} for n in range(4)]  # pairs
    rows += [{"query": "nothing here either", "pos": [], "neg": ["a", "b", "c"]}]  # a grouped row, empty pos
    rows += [{"query": "only relevant", "document": "wing fact", "label": 1}]
    data = tmp_path / "dev.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["calibrate", "--model", "m", "--data", str(data), "--out", str(out)]) == 0
    summary = json.loads((out / "calibration.json").read_text())
    assert (summary["pairs"], summary["positives"], summary["negatives"]) == (28, 11, 17)


def test_fit_warnings_flag_few_pairs_and_a_slope_at_its_bound():
    from tuner.calibrate import MIN_SLOPE, fit_warnings

    assert fit_warnings(500, 3000, 2.0) == []
    assert fit_warnings(1, 1, 2.0)[0].startswith("only 1 positive pair: ")
    assert "reached its bound" in fit_warnings(500, 500, 1 / MIN_SLOPE)[0]
    # the positive scored below the negative: a positive slope cannot fit them, it stops at its bound
    temperature, _ = fit_platt([0.1, 0.9], [1, 0])
    assert len(fit_warnings(1, 1, temperature)) == 2


def test_fit_warnings_take_min_pairs_per_label_itself_as_enough():
    from tuner.calibrate import MIN_PAIRS_PER_LABEL, fit_warnings

    assert fit_warnings(MIN_PAIRS_PER_LABEL, MIN_PAIRS_PER_LABEL, 2.0) == []
    assert fit_warnings(MIN_PAIRS_PER_LABEL - 1, 500, 2.0)[0].startswith(f"only {MIN_PAIRS_PER_LABEL - 1} positive")


def test_cross_validated_fits_never_see_their_own_fold(monkeypatch):
    """Each fold is scored by a fit on the other folds only (the out-of-fold estimate is not the in-sample one)."""
    from tuner import calibrate

    rng = np.random.default_rng(1)
    labels = np.array([0, 1] * 25)
    logits = rng.normal(size=50) + 2.0 * labels
    fitted = []
    original = calibrate.fit_platt
    monkeypatch.setattr(calibrate, "fit_platt", lambda x, y: fitted.append(set(x.tolist())) or original(x, y))
    assert calibrate._cross_validated(logits, labels, 5, seed=0)["folds"] == 5
    assert [len(f) for f in fitted] == [40] * 5
    left_out = [set(logits.tolist()) - f for f in fitted]  # each point is left out of exactly one fit
    assert sorted(x for part in left_out for x in part) == sorted(logits.tolist())


def test_cross_validated_folds_follow_the_seed():
    from tuner.calibrate import _cross_validated

    rng = np.random.default_rng(2)
    labels = np.array([0, 1] * 20)
    logits = rng.normal(size=40) + labels
    assert _cross_validated(logits, labels, 5, seed=3) == _cross_validated(logits, labels, 5, seed=3)
    assert _cross_validated(logits, labels, 5, seed=3) != _cross_validated(logits, labels, 5, seed=4)


def test_cross_validated_needs_two_pairs_per_fold():
    from tuner.calibrate import _cross_validated

    labels = np.array([0, 1] * 5)
    logits = np.linspace(-1.0, 1.0, 10) + labels
    assert _cross_validated(logits[:9], labels[:9], 5, seed=0) is None
    assert _cross_validated(logits, labels, 5, seed=0) is not None


def test_pairs_of_one_label_give_no_separation_test_and_no_cross_validated_estimate():
    """A single label carries no evidence (p = 1, not a log(0) error), and cross-validation whose training folds
    would miss a label gives no estimate rather than failing the whole calibration (one positive in ten pairs)."""
    from tuner.calibrate import _cross_validated, separation_p_value

    assert separation_p_value([1.0, 2.0], [1, 1], 1.0, 0.0) == separation_p_value([1.0, 2.0], [0, 0], 1.0, 0.0) == 1.0
    assert _cross_validated(np.arange(10.0), np.array([1] + [0] * 9), 5, seed=0) is None


def test_the_separation_test_measures_against_the_entropy_of_an_unbalanced_rate():
    """Dev pairs are mostly negatives: the constant the fit is tested against is the binary entropy of the positive
    rate (here 1/4, with both terms), so one clean positive among three negatives is significant (p = 0.034), where
    an entropy with a wrong term (0.42 instead of 0.56) called it degenerate (p = 0.067)."""
    from scipy.stats import chi2

    from tuner.calibrate import separation_p_value

    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    fitted = math.log1p(math.exp(-10.0))  # every pair on its side of 0 by 10
    p = separation_p_value([10.0, -10.0, -10.0, -10.0], [1, 0, 0, 0], 1.0, 0.0)
    assert p == pytest.approx(chi2.sf(2 * 4 * (entropy - fitted), 1), rel=1e-9) and p < 0.05


def test_a_fit_no_better_than_the_base_rate_is_degenerate_under_the_bound():
    """Logits unrelated to the labels fit a slope well under its bound, yet every calibrated probability is near
    the positive rate (0.44..0.55 here): the likelihood-ratio test calls it degenerate; a real signal passes."""
    from tuner.calibrate import MIN_SLOPE, apply_calibration, fit_warnings, is_degenerate, separation_p_value

    rng = np.random.default_rng(0)
    labels = np.array([1] * 50 + [0] * 50)
    noise = rng.normal(size=100)
    temperature, bias = fit_platt(noise, labels)
    p_value = separation_p_value(noise, labels, temperature, bias)
    assert temperature < 0.5 / MIN_SLOPE and p_value > 0.5 and is_degenerate(temperature, p_value)
    assert np.ptp(apply_calibration(noise, temperature, bias)) < 0.15
    assert "no better than a constant probability" in fit_warnings(50, 50, temperature, p_value)[0]
    signal = noise + 1.5 * labels
    temperature, bias = fit_platt(signal, labels)
    assert separation_p_value(signal, labels, temperature, bias) < 1e-6
    assert not is_degenerate(temperature, separation_p_value(signal, labels, temperature, bias))
    # two pairs of each label, cleanly separated: few, but not degenerate (tested on the plain fit, as
    # run_calibrate does: Platt's targets would count a perfect separation of four pairs as a weak one)
    few, labels = np.array([2.0, 3.0, -1.0, -2.0]), np.array([1, 1, 0, 0])
    temperature, bias = fit_platt(few, labels, smooth=False)
    assert not is_degenerate(temperature, separation_p_value(few, labels, temperature, bias))


class AntiCorrelated:  # positives score below negatives: no positive slope separates them
    instruction = None
    max_length = 8192

    def score_pairs(self, triples, normalize=True):
        return [-1.0 - 0.1 * n if doc.startswith("wing") else 1.0 + 0.1 * n for n, (_, doc, _) in enumerate(triples)]


class Unrelated(AntiCorrelated):  # logits that carry nothing about the labels: a slope under its bound, flat fit
    def score_pairs(self, triples, normalize=True):
        noise = np.random.default_rng(1).normal(size=len(triples))  # (p ≈ 0.5 for these 75 pairs, T ≈ 5)
        return [x + (0.2 if doc.startswith("wing") else 0.0) for x, (_, doc, _) in zip(noise, triples, strict=True)]


def _dev_and_target(tmp_path, queries: int = 25, instruction: str | None = "keep me"):
    """`queries` queries of 1 "wing" positive and 2 negatives, and a model folder whose tuner.json sets
    `instruction` (None: no tuner.json)."""
    rows = [
        {"query": f"question {n}", "pos": [f"wing fact {n}"], "neg": [f"banana {n}", f"engine {n}"]}
        for n in range(queries)
    ]
    data = tmp_path / "dev.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    target = tmp_path / "model"
    target.mkdir()
    (target / "config.json").write_text("{}")
    if instruction is not None:
        (target / "tuner.json").write_text(json.dumps({"instruction": instruction}))
    return data, target


class Separated(AntiCorrelated):  # positives above negatives, with some overlap: a sound fit
    def score_pairs(self, triples, normalize=True):
        noise = np.random.default_rng(2).normal(size=len(triples))
        return [x + (2.0 if doc.startswith("wing") else 0.0) for x, (_, doc, _) in zip(noise, triples, strict=True)]


def test_a_report_that_cannot_be_written_leaves_the_fit_unapplied(tmp_path, monkeypatch):
    """The reliability plot is drawn before --apply writes tuner.json: when it fails (a full disk), nothing was
    applied and no file of the report was replaced; when it works, both are done."""
    import errno

    from tuner import calibrate, eval_run

    monkeypatch.setattr(eval_run, "load_reranker", lambda *a, **k: Separated())
    data, target = _dev_and_target(tmp_path)
    plot = calibrate.plot_reliability

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(calibrate, "plot_reliability", full_disk)
    with pytest.raises(OSError, match="No space left"):
        calibrate.run_calibrate("m", data, tmp_path / "out", apply=str(target))
    assert json.loads((target / "tuner.json").read_text()) == {"instruction": "keep me"}
    assert not any((tmp_path / "out").iterdir())  # no report, and no temporary left
    monkeypatch.setattr(calibrate, "plot_reliability", plot)
    summary = calibrate.run_calibrate("m", data, tmp_path / "out", apply=str(target))
    assert json.loads((target / "tuner.json").read_text())["calibration"]["temperature"] == summary["temperature"]
    assert summary["applied_to"] and sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "calibration.json",
        "reliability.png",
        "report.md",
    ]


@pytest.mark.parametrize(
    ("scorer", "reason"),
    [(AntiCorrelated, "the temperature reached"), (Unrelated, "the logits separate the labels no better")],
)
def test_a_degenerate_fit_is_not_applied_without_force(tmp_path, monkeypatch, capsys, scorer, reason):
    """A fit whose temperature stops at its bound gives every pair ~the same probability (served scores all
    became 0.25 ± 2e-7), as does one that explains the labels no better than their base rate: `--apply` refuses
    it with exit 2, saying why and naming --force, and still writes the report; --force applies it."""
    from tuner import eval_run

    monkeypatch.setattr(eval_run, "load_reranker", lambda *a, **k: scorer())
    data, target = _dev_and_target(tmp_path)
    out = tmp_path / "out"
    argv = ["calibrate", "--model", "m", "--data", str(data), "--out", str(out), "--apply", str(target)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"tuner calibrate: error: calibration not applied: the fit is degenerate ({reason}" in err
    assert "pass --force to apply it anyway" in err and str(out) in err
    assert json.loads((target / "tuner.json").read_text()) == {"instruction": "keep me"}  # untouched
    summary = json.loads((out / "calibration.json").read_text())  # nothing lost: the report is there
    assert summary["applied_to"] is None and reason in summary["warnings"][0]
    assert "> **Not applied:** the fit is degenerate" in (out / "report.md").read_text()
    assert main([*argv, "--force"]) == 0
    assert json.loads((target / "tuner.json").read_text())["calibration"]["temperature"] == summary["temperature"]


def test_an_adapter_on_a_calibrated_merged_export_does_not_take_the_bases_calibration(tmp_path, tiny_model_dir):
    """A second round of tuning on a calibrated merged export: the new adapter's tuner.json has no calibration, and
    `Reranker.from_pretrained(adapter)` applied the base's (fitted on the base's logits) to the adapter's scores,
    while `tuner export` of the same adapter, which reads the adapter's tuner.json, wrote none: one adapter, two
    probabilities."""
    import shutil

    base = tmp_path / "merged"
    shutil.copytree(tiny_model_dir, base)
    (base / "tuner.json").write_text(json.dumps({"format": "merged", "calibration": CALIBRATION, "max_length": 512}))
    run = make_run(tmp_path / "run2", base)
    meta = json.loads((run / "adapter" / "tuner.json").read_text())
    del meta["calibration"]  # a fresh run's adapter: not calibrated yet
    (run / "adapter" / "tuner.json").write_text(json.dumps(meta))
    reranker = Reranker.from_pretrained(run / "adapter", device="cpu", dtype="float32")
    assert reranker.calibration is None
    assert Reranker.from_pretrained(base, device="cpu", dtype="float32").calibration == CALIBRATION  # its own


def test_cross_validated_figures_are_those_of_each_folds_calibrated_logits(monkeypatch):
    """Each fold's pairs are scored with sigmoid(logit / T + b) of the fit on the other folds: with every fit
    returning (T, b) = (2, 0.5), the out-of-fold ECE, log loss and Brier are those of logit / 2 + 0.5."""
    from tuner import calibrate

    rng = np.random.default_rng(3)
    labels = np.array([0, 1] * 20)
    logits = rng.normal(size=40) + 2.0 * labels
    monkeypatch.setattr(calibrate, "fit_platt", lambda x, y: (2.0, 0.5))
    got = calibrate._cross_validated(logits, labels, 5, seed=0)
    assert got == pytest.approx(calibration_metrics(logits, labels, 2.0, 0.5) | {"folds": 5}, abs=1e-12)


def test_the_summary_gives_the_figures_of_the_pairs_it_scored_each_with_its_own_instruction(tmp_path, monkeypatch):
    """calibration.json describes the logits scored: 'before' and the first reliability bins are of sigmoid(logit)
    itself, the logit means are per label, the cross-validated row follows the seed (and is in the report); a pair
    is scored with its row's instruction."""
    from tuner import calibrate, eval_run
    from tuner.calibrate import _cross_validated

    scored = []

    class Recording(Separated):
        def score_pairs(self, triples, normalize=True):
            scored.extend(triples)
            return super().score_pairs(triples, normalize)

    monkeypatch.setattr(eval_run, "load_reranker", lambda *a, **k: Recording())
    rows = [
        {"query": f"question {n}", "pos": [f"wing fact {n}"], "neg": [f"banana {n}", f"engine {n}"]}
        | ({"instruction": "Find wings"} if n % 2 else {})
        for n in range(25)
    ]
    data = tmp_path / "dev.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    summary = calibrate.run_calibrate("m", data, tmp_path / "out", seed=3)
    assert [t[2] for t in scored] == [("Find wings" if n % 2 else None) for n in range(25) for _ in range(3)]
    labels = np.array([1, 0, 0] * 25)
    logits = np.array(Separated().score_pairs(scored))
    assert summary["before"] == pytest.approx(calibration_metrics(logits, labels), abs=1e-12)
    assert summary["reliability_before"] == reliability_bins(apply_calibration(logits), labels)
    stats = summary["logit_stats"]
    assert (stats["mean_pos"], stats["mean_neg"]) == pytest.approx(
        (logits[labels == 1].mean(), logits[labels == 0].mean())
    )
    assert summary["after_cross_validated"] == pytest.approx(_cross_validated(logits, labels, 5, seed=3))
    assert summary["after_cross_validated"] != pytest.approx(_cross_validated(logits, labels, 5, seed=0))
    assert "| after, 5-fold cross-validated |" in (tmp_path / "out" / "report.md").read_text()


class FarApart(AntiCorrelated):  # every positive far above every negative: easy pairs
    def score_pairs(self, triples, normalize=True):
        return [(5.0 if doc.startswith("wing") else -5.0) + 0.1 * n for n, (_, doc, _) in enumerate(triples)]


def test_easy_pairs_are_applied_with_a_bounded_fit_and_a_warning(tmp_path, monkeypatch):
    """Dev pairs the model separates perfectly, and few of them (3 positives, 6 negatives): the fit is applied, its
    probabilities bounded by Platt's targets (not a 0/1 step reported as perfect), its separation measured on the
    plain fit (significant: the smoothed one would call these nine pairs degenerate), and the report says they are
    easy pairs."""
    from tuner import calibrate, eval_run

    monkeypatch.setattr(eval_run, "load_reranker", lambda *a, **k: FarApart())
    data, target = _dev_and_target(tmp_path, queries=3, instruction=None)
    summary = calibrate.run_calibrate("m", data, tmp_path / "out", apply=str(target))
    assert summary["applied_to"] and summary["separation_p_value"] < 0.05
    assert summary["after"]["log_loss"] > 0.05  # not the step: each pair keeps Platt's prior doubt
    warnings = summary["warnings"]
    assert len(warnings) == 2 and warnings[0].startswith("only 3 positive pairs")
    assert warnings[1].startswith("every positive pair scores above every negative one")
    assert "tend to 0.800 and 0.125, Platt's targets for these counts" in warnings[1]  # 4/5 and 1/8
    assert "every positive pair scores above" in (tmp_path / "out" / "report.md").read_text()


def test_a_fit_on_queries_the_run_trained_on_is_warned_about(tmp_path, monkeypatch):
    """Dev pairs whose queries the model's tuner run trained on score as the run learned them (more confidently
    than new queries): the fit is made, and the report says how many of its queries were trained on."""
    from tuner import calibrate, eval_run
    from tuner.overlap import TRAINING_VIEW, TrainingView, text_key, write_view

    monkeypatch.setattr(eval_run, "load_reranker", lambda *a, **k: Separated())
    data, _ = _dev_and_target(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: run\n")
    trained = frozenset(text_key(f"question {n}") for n in (0, 3, 7))
    write_view(TrainingView("train.jsonl", trained, frozenset(), 3), run / TRAINING_VIEW)
    summary = calibrate.run_calibrate(str(run / "adapter"), data, tmp_path / "out")
    note = f"3 of the 25 queries of {data} are queries run {run} trained on"
    assert [w for w in summary["warnings"] if w.startswith(note)] and "fit on held-out" in summary["warnings"][-1]
    assert note in (tmp_path / "out" / "report.md").read_text()
    # a model from no run, and a run whose training data cannot be read, are fitted without it
    assert not any("trained on" in w for w in calibrate.run_calibrate("m", data, tmp_path / "o2")["warnings"])
    (run / TRAINING_VIEW).unlink()
    unread = calibrate.run_calibrate(str(run / "adapter"), data, tmp_path / "o3")
    assert not any("trained on" in w for w in unread["warnings"])
