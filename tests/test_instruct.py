"""Instruction search on the tiny model and a small BEIR slice written into tmp_path (conftest `beir_dir`)."""

from __future__ import annotations

import json

import pytest

from tuner.cli import main
from tuner.contract import DEFAULT_INSTRUCTION
from tuner.evaluate import Evaluator
from tuner.instruct import Candidate, apply_meta, apply_targets, candidate_instructions, read_instructions, search
from tuner.scoring import Reranker

CUSTOM = [
    "Given a health question, retrieve the abstract that answers it",
    "Find fruit",
    "Retrieve relevant passages",
]


def test_candidates_always_include_default_and_none_without_duplicates():
    cands = candidate_instructions(["Find X", DEFAULT_INSTRUCTION, "", "Find X"], None)
    assert cands == [
        Candidate("default", DEFAULT_INSTRUCTION),
        Candidate("no instruction", ""),
        Candidate("custom 1", "Find X"),
    ]
    # a model whose tuner.json has its own default: that one is the reference, the card's is still tried
    cands = candidate_instructions([], "Find papers")
    assert [(c.label, c.text) for c in cands] == [
        ("default", "Find papers"),
        ("model card default", DEFAULT_INSTRUCTION),
        ("no instruction", ""),
    ]


def test_a_model_whose_default_is_no_instruction_is_searched_against_no_instruction():
    """A model whose tuner.json says `"instruction": ""` (no instruction won an earlier search) scores without one:
    that is the search's reference (candidate 0, "default"), not the model card's instruction."""
    cands = candidate_instructions([], "")
    assert [(c.label, c.text) for c in cands] == [("default", ""), ("model card default", DEFAULT_INSTRUCTION)]


def test_read_instructions_skips_blanks_and_comments(tmp_path):
    path = tmp_path / "inst.txt"
    path.write_text("# a comment\n\n  Find papers  \nRetrieve passages\n", encoding="utf-8")
    assert read_instructions(path) == ["Find papers", "Retrieve passages"]
    path.write_text("Find papers\u2028on wings\r\nRetrieve\x0cpassages\n", encoding="utf-8", newline="")
    assert read_instructions(path) == ["Find papers\u2028on wings", "Retrieve\x0cpassages"]  # "\n" ends a line
    path.write_text("# only a comment\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"inst\.txt: no instruction"):
        read_instructions(path)
    path.write_bytes(b"Find papers\nRetrieve caf\xe9s\n")
    with pytest.raises(ValueError, match=r"inst\.txt:2: not UTF-8 text"):
        read_instructions(path)
    with pytest.raises(ValueError, match="a folder; --instructions takes a text file"):
        read_instructions(tmp_path)


def test_search_picks_the_instruction_with_the_best_measured_ndcg(evaluator, beir_dir, tiny_reranker):
    cands = candidate_instructions(CUSTOM, tiny_reranker.instruction)
    results, best = search(tiny_reranker, evaluator, cands)
    # a direct evaluation, on a fresh evaluator (no shared encoding cache), of every instruction
    fresh = Evaluator.from_beir(beir_dir, "test", candidates="bm25", top_k=5, show_progress=False)
    direct = [fresh.evaluate(tiny_reranker, instruction=c.text).metrics["ndcg@10"] for c in cands]
    assert [r.metrics["ndcg@10"] for r in results] == pytest.approx(direct, abs=1e-12)
    assert len(set(round(x, 9) for x in direct)) > 1, "instructions must change the ranking for this test to bite"
    assert direct[best] == max(direct)
    assert best == min(i for i, x in enumerate(direct) if x == max(direct))  # ties: the earlier (default first)
    assert results[best].info["instruction"] == cands[best].text


def test_cli_instruct_writes_reports_and_applies_the_winner(tmp_path, beir_dir, tiny_model_dir, tokenizer, capsys):
    inst = tmp_path / "inst.txt"
    inst.write_text("\n".join(CUSTOM) + "\n", encoding="utf-8")
    export_dir = tmp_path / "export"  # a model dir with a tuner.json holding other keys that must survive
    export_dir.mkdir()
    (export_dir / "config.json").write_text((tiny_model_dir / "config.json").read_text(), encoding="utf-8")
    (export_dir / "tuner.json").write_text(json.dumps({"base_model": "x", "calibration": {"temperature": 2.0}}))
    out = tmp_path / "out"
    argv = ["instruct", "--model", str(tiny_model_dir), "--beir", str(beir_dir), "--split", "test", "--top-k", "5"]
    argv += ["--instructions", str(inst), "--out", str(out), "--apply", str(export_dir), "--cache-dir", ""]
    # the winner gains on 1 of the 5 judged queries: no paired test can call that significant; with --force
    # (refusal: test_an_insignificant_winner_is_not_applied_without_force)
    assert main([*argv, "--no-progress", "--force"]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    info = summary["instruction_search"]
    labels = [c["label"] for c in info["candidates"]]
    assert labels == ["default", "no instruction", "custom 1", "custom 2", "custom 3"]
    values = [c["ndcg@10"] for c in info["candidates"]]
    assert (
        info["winner_value"] == max(values) and info["winner"] == info["candidates"][values.index(max(values))]["text"]
    )
    assert summary["reference"] == "default"  # paired tests are against the default
    for system in summary["systems"][2:]:
        assert {"p_ttest", "p_randomization", "wins"} <= set(system["vs_reference"]["ndcg@10"])
    report = (out / "report.md").read_text()
    assert report.startswith("# Instruction search") and "p (paired t-test)" in report
    assert (out / "report.png").is_file() and (out / "per_query.jsonl").is_file()
    assert json.loads((out / "tuner.json").read_text())["instruction"] == info["winner"]
    # the calibration records no instruction it was fitted with: it was kept, miscalibrated, under the new one
    applied = json.loads((export_dir / "tuner.json").read_text())
    assert applied == {"base_model": "x", "instruction": info["winner"]}
    err = capsys.readouterr().err
    assert f"tuner instruct: warning: removed the calibration (temperature 2.0, bias 0.0) from {export_dir}" in err
    assert f"tuner calibrate --model {export_dir} --data DEV_PAIRS.jsonl --out runs/calibration --apply" in err
    level, n = info["significance_level"], len(info["candidates"])
    assert (
        f"not significant at {level:.3g} (the best of {n} candidates), applied because of --force"
        in info["warnings"][0]
    )
    assert info["warnings"] == [w.strip() for w in err.split("tuner instruct: warning: ")[1:]]


def _instruct_argv(tiny_model_dir, beir_dir, tmp_path, *more):
    inst = tmp_path / "inst.txt"
    inst.write_text("\n".join(CUSTOM) + "\n", encoding="utf-8")
    argv = ["instruct", "--model", str(tiny_model_dir), "--beir", str(beir_dir), "--split", "test", "--top-k", "5"]
    return [*argv, "--instructions", str(inst), "--cache-dir", "", "--no-progress", *more]


def _model_dir(tmp_path, tiny_model_dir, meta):
    target = tmp_path / "target"
    target.mkdir()
    (target / "config.json").write_text((tiny_model_dir / "config.json").read_text(), encoding="utf-8")
    (target / "tuner.json").write_text(json.dumps(meta))
    return target


def test_an_insignificant_winner_is_not_applied_without_force(tmp_path, beir_dir, tiny_model_dir, capsys):
    """A winner no better than noise (here +0.07 nDCG@10 from 1 win / 4 ties over 5 queries, p = 1.0) was written
    into the target's tuner.json, removing its calibration, with only report.md saying it was not significant: it
    is now said on stderr and recorded, and --apply refuses it (exit 2, one line, the report written) unless
    --force."""
    out = tmp_path / "out"
    assert main(_instruct_argv(tiny_model_dir, beir_dir, tmp_path, "--out", str(out))) == 0
    err = capsys.readouterr().err
    info = json.loads((out / "metrics.json").read_text())["instruction_search"]
    assert info["winner_label"] == "custom 1" and info["winner_vs_default"]["p_randomization"] >= 0.05
    gain = f"the winner 'custom 1' ({CUSTOM[0]!r}) gains {info['delta_vs_default']:+.4f} nDCG@10 over the default"
    assert f"tuner instruct: warning: {gain} ({DEFAULT_INSTRUCTION!r}): 1 wins / 4 ties / 0 losses, p = 1.0000" in err
    level, n = info["significance_level"], len(info["candidates"])
    assert level == pytest.approx(0.05 / (n - 1))  # Bonferroni: the winner is the best of n candidates
    assert f"not significant at {level:.3g} (the best of {n} candidates)" in err
    assert info["warnings"] == [err.split("warning: ")[1].strip()]
    assert json.loads((out / "tuner.json").read_text())["instruction_search"]["warnings"] == info["warnings"]

    calibrated = {"instruction": DEFAULT_INSTRUCTION, "calibration": {"temperature": 2.0}}
    target = _model_dir(tmp_path, tiny_model_dir, calibrated)
    out2 = tmp_path / "out2"
    argv = _instruct_argv(tiny_model_dir, beir_dir, tmp_path, "--out", str(out2), "--apply", str(target))
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tuner ")]  # no load bars
    assert err == [
        f"tuner instruct: error: instruction not applied: the winner 'custom 1' ({CUSTOM[0]!r}) gains "
        f"{info['delta_vs_default']:+.4f} nDCG@10 over the instruction {target} uses ({DEFAULT_INSTRUCTION!r}): 1 "
        f"wins / 4 ties / 0 losses, p = 1.0000 (paired randomization test), not significant at {level:.3g} (the best "
        f"of {n} candidates), so --apply {target} was refused and its tuner.json left unchanged; pass --force to "
        f"apply it anyway (report in {out2})"
    ]
    assert json.loads((target / "tuner.json").read_text()) == calibrated  # untouched, calibration kept
    refused = json.loads((out2 / "metrics.json").read_text())["instruction_search"]
    assert refused["applied_to"] is None and refused["apply_refused"] in err[0]
    assert "> **Not applied:** the winner 'custom 1'" in (out2 / "report.md").read_text()

    assert main([*argv, "--force"]) == 0
    assert json.loads((target / "tuner.json").read_text()) == {"instruction": CUSTOM[0]}
    assert "applied because of --force" in capsys.readouterr().err


def test_a_significant_winner_is_applied_and_one_in_use_is_not_rewritten(
    tmp_path, beir_dir, tiny_model_dir, capsys, monkeypatch
):
    """The winner is tested against the instruction the target uses (scored as a candidate when it is none of
    them); when significant it is applied without --force; when the target uses the winner already, nothing is
    written (rewriting it would remove a calibration that does not record its instruction)."""
    from tuner import instruct, report

    def significant(reference, other, **kwargs):  # 5 queries cannot be significant: the test's verdict is forced
        return {**report.paired_stats(reference, other, **kwargs), "p_randomization": 0.001}

    monkeypatch.setattr(instruct, "paired_stats", significant)
    target = _model_dir(tmp_path, tiny_model_dir, {"instruction": "Find cats"})
    out = tmp_path / "out"
    argv = _instruct_argv(tiny_model_dir, beir_dir, tmp_path, "--out", str(out), "--apply", str(target))
    assert main(argv) == 0
    info = json.loads((out / "metrics.json").read_text())["instruction_search"]
    assert [c["label"] for c in info["candidates"]][-1] == "in use by --apply"
    assert info["candidates"][-1]["text"] == "Find cats" and info["winner"] == CUSTOM[0]
    assert info["applied_to"] == [str(target / "tuner.json")] and info["apply_refused"] is None
    assert json.loads((target / "tuner.json").read_text()) == {"instruction": CUSTOM[0]}
    assert "applied because of --force" not in capsys.readouterr().err

    unrecorded = {"instruction": CUSTOM[0], "calibration": {"temperature": 2.0}}
    (target / "tuner.json").write_text(json.dumps(unrecorded))
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert f"not applied: the winner 'custom 1' ({CUSTOM[0]!r}) is the instruction {target} uses already" in stdout
    assert json.loads((target / "tuner.json").read_text()) == unrecorded
    assert json.loads((out / "metrics.json").read_text())["instruction_search"]["applied_to"] is None


def test_a_p_value_at_the_level_is_not_significant():
    from tuner.instruct import _significant

    assert _significant({"p_randomization": 0.0499}, 0.05)
    assert not _significant({"p_randomization": 0.05}, 0.05)
    assert not _significant({"p_randomization": None}, 0.05) and not _significant(None, 0.05)


def test_a_tie_goes_to_the_default_then_to_the_earlier_candidate():
    from types import SimpleNamespace

    class Fixed:  # an evaluator whose nDCG per instruction is given
        primary_metric = "ndcg@10"

        def __init__(self, values):
            self.values = values

        def evaluate(self, reranker, instruction, label):
            return SimpleNamespace(metrics={"ndcg@10": self.values[instruction]}, info={})

    cands = [Candidate("default", "d"), Candidate("no instruction", ""), Candidate("custom 1", "c1")]
    assert search(None, Fixed({"d": 0.5, "": 0.5, "c1": 0.5}), cands)[1] == 0
    assert search(None, Fixed({"d": 0.4, "": 0.5, "c1": 0.5}), cands)[1] == 1


def test_apply_tests_at_the_corrected_level_and_warns_once(tmp_path, beir_dir, tiny_model_dir, capsys, monkeypatch):
    """--apply's test against the instruction in use is at the Bonferroni level, not 0.05; when that instruction is
    the default the verdict is said once (the refusal, or the --force warning), not twice."""
    from tuner import instruct, report

    def p_between(reference, other, **kwargs):  # significant at 0.05, not at 0.05 / (candidates - 1)
        return {**report.paired_stats(reference, other, **kwargs), "p_randomization": 0.02}

    monkeypatch.setattr(instruct, "paired_stats", p_between)
    target = _model_dir(tmp_path, tiny_model_dir, {"instruction": DEFAULT_INSTRUCTION})
    out = tmp_path / "out"
    argv = _instruct_argv(tiny_model_dir, beir_dir, tmp_path, "--out", str(out), "--apply", str(target))
    assert main(argv) == 2
    info = json.loads((out / "metrics.json").read_text())["instruction_search"]
    assert info["winner_label"] == "custom 1" and info["significance_level"] < 0.02
    assert "p = 0.0200" in info["apply_refused"] and info["warnings"] == []
    assert main([*argv, "--force"]) == 0
    warned = json.loads((out / "metrics.json").read_text())["instruction_search"]["warnings"]
    assert len(warned) == 1 and "applied because of --force" in warned[0]
    capsys.readouterr()


def test_the_winner_level_is_corrected_for_the_number_of_candidates():
    """The best of 8 equal instructions passed an uncorrected 0.05 in 12% of simulated trials (6.5% for one chosen
    in advance): the winner's test is at 0.05 / (candidates - 1)."""
    from tuner.instruct import winner_level

    assert winner_level(2) == 0.05 and winner_level(9) == pytest.approx(0.05 / 8) and winner_level(1) == 0.05


def test_the_search_section_of_the_report_lists_every_candidate_and_says_when_the_gain_is_noise():
    """report.md's table shows an instruction holding "|" whole and "no instruction" as (none); a winner whose
    paired test is not significant at the corrected level is said to be so."""
    from tuner.instruct import _render_search

    stats = {"queries": 5, "wins": 1, "ties": 4, "losses": 0, "p_ttest": 0.37, "p_randomization": 1.0}
    info = {
        "winner_label": "custom 1",
        "winner_value": 0.6,
        "delta_vs_default": 0.1,
        "winner_vs_default": stats,
        "significance_level": 0.025,
        "candidates": [
            {"label": "default", "text": DEFAULT_INSTRUCTION},
            {"label": "no instruction", "text": ""},
            {"label": "custom 1", "text": "Find a | b"},
        ],
    }
    text = _render_search({"primary_metric": "ndcg@10", "instruction_search": info})
    assert "| no instruction | (none) |" in text and "| custom 1 | Find a \\| b |" in text
    assert "The difference is not significant at 0.025 (0.05 over the 2 alternatives to the default" in text


def test_apply_meta_targets_run_and_multi_format_exports_and_rejects_others(tmp_path):
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    assert apply_meta(run, {"instruction": "A"}) == [run / "adapter" / "tuner.json"]
    multi = tmp_path / "multi"
    for fmt in ("merged", "seq-cls"):
        (multi / fmt).mkdir(parents=True)
        (multi / fmt / "config.json").write_text("{}")
        (multi / fmt / "tuner.json").write_text(json.dumps({"format": fmt}))
    written = apply_meta(multi, {"instruction": "B"})
    assert [json.loads(p.read_text()) for p in written] == [
        {"format": "merged", "instruction": "B"},
        {"format": "seq-cls", "instruction": "B"},
    ]
    with pytest.raises(FileNotFoundError, match="neither a model"):
        apply_meta(tmp_path, {"instruction": "C"})


def test_the_instructions_an_export_root_uses_are_listed_once(tmp_path):
    """`tuner export --format all` writes one instruction into each of its three formats: --apply on its root tests
    the winner against that instruction once (a list with it three times gave three identical --force warnings)."""
    from tuner.instruct import current_instructions

    root = tmp_path / "export"
    for fmt, config, instruction in (("adapter", "adapter_config.json", "A"), ("merged", "config.json", "A"),
                                     ("seq-cls", "config.json", None)):  # fmt: skip
        (root / fmt).mkdir(parents=True)
        (root / fmt / config).write_text("{}")
        (root / fmt / "tuner.json").write_text(json.dumps({"format": fmt, "instruction": instruction}))
    assert current_instructions(root) == ["A", DEFAULT_INSTRUCTION]


def test_apply_to_a_missing_folder_names_every_kind_it_takes(tmp_path):
    """`--apply runs/quik` (a typo of the README's `--apply runs/quick`): the error names runs among the folders
    --apply takes, not only adapter and export folders."""
    with pytest.raises(FileNotFoundError, match=r"quik: no such adapter, run or export directory"):
        apply_targets(tmp_path / "runs" / "quik")


def test_apply_to_a_folder_of_models_that_tuner_did_not_export_is_refused(tmp_path):
    """An export root's format folders carry the tuner.json export wrote; a folder of other models (`--apply models`
    for `--apply models/mine`) is refused, not given a tuner.json in each model folder it holds."""
    models = tmp_path / "models"
    for name in ("base", "other"):
        (models / name).mkdir(parents=True)
        (models / name / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="neither a model"):
        apply_meta(models, {"instruction": "A"})
    assert not list(models.rglob("tuner.json"))


def test_apply_meta_updates_every_format_of_an_export_root_but_only_a_runs_adapter(tmp_path):
    """`tuner export --format all` writes adapter/, merged/ and seq-cls/: all three get the update (adapter/ alone
    did, as if the export root were a run, so one export scored differently per format). A training run (its
    config.yaml and adapter/) still updates its adapter only, even with an export saved inside it."""
    root = tmp_path / "export"
    for fmt, config in (("adapter", "adapter_config.json"), ("merged", "config.json"), ("seq-cls", "config.json")):
        (root / fmt).mkdir(parents=True)
        (root / fmt / config).write_text("{}")
        (root / fmt / "tuner.json").write_text(json.dumps({"format": fmt, "instruction": "old"}))
    (root / "parity.json").write_text("{}")
    assert apply_targets(root) == [root / "adapter", root / "merged", root / "seq-cls"]
    written = apply_meta(root, {"instruction": "new"})
    assert [json.loads(p.read_text()) for p in written] == [
        {"format": fmt, "instruction": "new"} for fmt in ("adapter", "merged", "seq-cls")
    ]
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "adapter" / "tuner.json").write_text(json.dumps({"instruction": "old"}))
    (run / "config.yaml").write_text("name: tiny\n")
    (run / "exported").mkdir()  # `tuner export run --out run/exported`: not part of the run's own model
    (run / "exported" / "config.json").write_text("{}")
    (run / "exported" / "tuner.json").write_text(json.dumps({"format": "merged", "instruction": "old"}))
    assert apply_meta(run, {"instruction": "new"}) == [run / "adapter" / "tuner.json"]
    assert json.loads((run / "exported" / "tuner.json").read_text())["instruction"] == "old"


def test_an_applied_instruction_removes_a_calibration_fitted_with_another(tmp_path):
    """A calibration fitted with one instruction does not hold for another: a new instruction removes it (with a
    warning naming the refit command); the same instruction keeps it, and a new calibration applied with the
    instruction is kept."""
    from tuner.loading import read_meta

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    fitted = {"temperature": 2.0, "bias": 0.5, "instruction": "Find papers", "max_length": 512}
    (model / "tuner.json").write_text(json.dumps({"instruction": "Find papers", "calibration": fitted}))
    assert read_meta(model)["calibration"] == fitted  # the new keys load
    warnings: list[str] = []
    apply_meta(model, {"instruction": "Find papers"}, on_warning=warnings.append)
    assert read_meta(model)["calibration"] == fitted and warnings == []
    apply_meta(model, {"instruction": "Find code", "calibration": {**fitted, "instruction": "Find code"}})
    assert read_meta(model)["calibration"]["instruction"] == "Find code"
    apply_meta(model, {"instruction": None}, on_warning=warnings.append)  # the model card's default
    assert "calibration" not in read_meta(model)
    assert len(warnings) == 1
    assert warnings[0].startswith("removed the calibration (temperature 2.0, bias 0.5) from ")
    assert "fitted with instruction 'Find code'" in warnings[0] and repr(DEFAULT_INSTRUCTION) in warnings[0]
    assert warnings[0].endswith(
        f"tuner calibrate --model {model} --data DEV_PAIRS.jsonl --out runs/calibration --apply {model}"
    )
    # a hand-edited record fails naming its field
    (model / "tuner.json").write_text(json.dumps({"calibration": {"temperature": 2.0, "instruction": 3}}))
    with pytest.raises(ValueError, match=r"tuner\.json: field 'calibration\.instruction' must be a string"):
        read_meta(model)


def test_a_calibration_fitted_with_the_default_is_applied_without_a_warning_to_a_model_with_no_instruction(tmp_path):
    """`tuner calibrate --apply` on a model whose tuner.json sets no instruction: the fit records the model card's
    default, which is what that model scores with, so there is nothing to warn about."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "tuner.json").write_text(json.dumps({"max_length": 512}))
    warnings: list[str] = []
    fitted = {"temperature": 2.0, "bias": 0.5, "instruction": DEFAULT_INSTRUCTION, "max_length": 512}
    apply_meta(model, {"calibration": fitted}, on_warning=warnings.append)
    assert json.loads((model / "tuner.json").read_text())["calibration"] == fitted and warnings == []
    apply_meta(model, {"calibration": {**fitted, "instruction": "Find code"}}, on_warning=warnings.append)
    assert len(warnings) == 1 and "fitted with instruction 'Find code'" in warnings[0]


@pytest.mark.parametrize("verb", ["instruct", "calibrate"])
def test_a_wrong_apply_fails_before_any_scoring(verb, tmp_path, monkeypatch, capsys):
    """--apply on a folder that is no adapter, run or export: exit 2 naming it, before a model loads or --out is
    written (it used to fail after the whole search, leaving a report without its tuner.json)."""
    from tuner import calibrate, eval_run
    from tuner import instruct as instruct_mod
    from tuner.cli import main

    def no_work(*args, **kwargs):
        raise AssertionError("work started before --apply was checked")

    for module in (eval_run, instruct_mod, calibrate):
        monkeypatch.setattr(module, "load_reranker", no_work, raising=False)
    monkeypatch.setattr(eval_run.Evaluator, "from_beir", no_work)
    (tmp_path / "empty").mkdir()
    data = tmp_path / "dev.jsonl"
    data.write_text(json.dumps({"query": "q", "pos": ["a"], "neg": ["b"]}) + "\n")
    source = ["--beir", str(tmp_path)] if verb == "instruct" else ["--data", str(data)]
    out = tmp_path / "out"
    argv = [verb, "--model", str(tmp_path), *source, "--out", str(out), "--apply", str(tmp_path / "empty")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--apply {tmp_path / 'empty'}: neither a model" in err
    assert not out.exists()


def test_reranker_default_instruction_comes_from_the_applied_tuner_json(tmp_path, tiny_model_dir, tiny_reranker):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for f in tiny_model_dir.iterdir():
        (model_dir / f.name).symlink_to(f)
    apply_meta(model_dir, {"instruction": "Find fruit"})
    loaded = Reranker.from_pretrained(model_dir, device="cpu", dtype="float32")
    assert loaded.instruction == "Find fruit"
    docs = ["Bananas are yellow.", "Wings make lift."]
    assert loaded.score("q", docs, normalize=False) == pytest.approx(
        tiny_reranker.score("q", docs, instruction="Find fruit", normalize=False), abs=1e-6
    )


def test_an_applied_instruction_reaches_a_template_kept_in_tokenizer_config(tmp_path):
    """An export written by an older transformers keeps its chat template in tokenizer_config.json, not in
    chat_template.jinja: that one gets the new default instruction too, the file's other keys kept; a template tuner
    did not generate is left alone."""
    from tuner.chat_template import build_chat_template

    export_dir = tmp_path / "merged"
    export_dir.mkdir()
    (export_dir / "config.json").write_text("{}")
    (export_dir / "tuner.json").write_text(json.dumps({"format": "merged"}))
    config = {"chat_template": build_chat_template(None), "model_max_length": 512}
    (export_dir / "tokenizer_config.json").write_text(json.dumps(config))
    apply_meta(export_dir, {"instruction": "Find abstracts"})
    config = json.loads((export_dir / "tokenizer_config.json").read_text())
    assert config == {"chat_template": build_chat_template("Find abstracts"), "model_max_length": 512}
    own = {"chat_template": "{{ messages[0].content }}"}
    (export_dir / "tokenizer_config.json").write_text(json.dumps(own))
    apply_meta(export_dir, {"instruction": "Find code"})
    assert json.loads((export_dir / "tokenizer_config.json").read_text()) == own


def test_a_regenerated_template_is_checked_before_anything_is_written_and_unchecked_figures_are_dropped(
    tmp_path, monkeypatch
):
    """`apply_meta` on an export re-checks its regenerated template against the contract's prompt: one that renders
    otherwise fails with nothing written. Without a tokenizer to check it with, the export-time template figures
    (of a template the export no longer ships) are dropped and the record says the template was not re-checked."""
    from tuner import chat_template
    from tuner.contract import load_tokenizer
    from tuner.export import save_tokenizer

    export_dir = tmp_path / "merged"
    export_dir.mkdir()
    (export_dir / "config.json").write_text("{}")
    (export_dir / "chat_template.jinja").write_text(chat_template.build_chat_template(None))
    meta = {"format": "merged", "parity": {"template": {"probes": 9, "prompt_strings_equal": 9, "token_ids_equal": 9}}}
    (export_dir / "tuner.json").write_text(json.dumps(meta))
    apply_meta(export_dir, {"instruction": "Find abstracts"})  # no tokenizer here
    parity = json.loads((export_dir / "tuner.json").read_text())["parity"]
    assert "template" not in parity and parity["instruction_changed"]["template_rechecked"] is False

    save_tokenizer(load_tokenizer(), export_dir, 64)  # writes the tokenizer's own chat_template.jinja: ours again
    (export_dir / "chat_template.jinja").write_text(chat_template.build_chat_template("Find abstracts"))
    before = {p.name: p.read_bytes() for p in export_dir.iterdir()}
    build = chat_template.build_chat_template
    monkeypatch.setattr(chat_template, "build_chat_template", lambda instruction=None: build(instruction) + "!")
    with pytest.raises(ValueError, match=r"rendered .* as the contract's prompt; nothing was changed"):
        apply_meta(export_dir, {"instruction": "Find code"})
    assert {p.name: p.read_bytes() for p in export_dir.iterdir()} == before


def test_rechecking_an_exports_template_gives_no_transformers_length_warning(tmp_path, capfd):
    """An export's tokenizer keeps `model_max_length = max_length` (256 in the tiny recipe); the template re-check of
    `tuner instruct --apply EXPORT` tokenizes the untruncated long probe with it, and transformers printed "Token
    indices sequence length is longer than the specified maximum sequence length for this model (618 > 256) ...
    will result in indexing errors" once per format, of a check that runs no model."""
    from tuner.chat_template import build_chat_template
    from tuner.contract import load_tokenizer
    from tuner.export import save_tokenizer

    export_dir = tmp_path / "merged"
    export_dir.mkdir()
    save_tokenizer(load_tokenizer(), export_dir, 64)
    (export_dir / "config.json").write_text("{}")
    (export_dir / "chat_template.jinja").write_text(build_chat_template(None))
    (export_dir / "tuner.json").write_text(json.dumps({"format": "merged", "max_length": 64, "parity": {}}))
    capfd.readouterr()
    apply_meta(export_dir, {"instruction": "Find abstracts"})
    assert json.loads((export_dir / "tuner.json").read_text())["parity"]["template"]["prompt_strings_equal"] == 9
    assert "Token indices sequence length" not in capfd.readouterr().err


def test_a_search_on_queries_the_run_trained_on_is_warned_about(tmp_path, beir_dir, tiny_model_dir, capsys):
    """An instruction searched on queries the model's run trained on is picked for what the run learned, not for
    new queries: the search says how many of them it trained on, on stderr and in metrics.json."""
    import shutil

    from tuner.data.beir import load_beir
    from tuner.overlap import TRAINING_VIEW, TrainingView, text_key, write_view

    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run / "model")  # a fully fine-tuned run's weights
    (run / "config.yaml").write_text("name: run\n")
    queries = sorted(load_beir(beir_dir, "test").queries.values())
    write_view(TrainingView("t.jsonl", frozenset({text_key(queries[0])}), frozenset(), 1), run / TRAINING_VIEW)
    argv = _instruct_argv(tiny_model_dir, beir_dir, tmp_path, "--out", str(tmp_path / "out"))
    argv[argv.index("--model") + 1] = str(run / "model")
    assert main(argv) == 0
    note = f"1 of the {len(queries)} queries of "
    warned = json.loads((tmp_path / "out" / "metrics.json").read_text())["instruction_search"]["warnings"]
    assert [w for w in warned if w.startswith(note) and f"queries run {run} trained on" in w]
    assert "pick the instruction on held-out queries" in capsys.readouterr().err
