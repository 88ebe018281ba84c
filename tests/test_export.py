"""`tuner export`: every format passes the parity gate, a corrupted export fails it and leaves nothing behind."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from exporting import RUN_INSTRUCTION, make_run
from transformers import AutoTokenizer

from tuner import export as export_mod
from tuner.cli import main
from tuner.export import PROBES, export
from tuner.scoring import Reranker


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"), tiny_model_dir)


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "all"
    assert main(["export", str(run_dir), "--out", str(out), "--format", "all", "--device", "cpu"]) == 0
    return out


def test_export_all_writes_three_formats_with_parity_figures(exported, run_dir):
    assert sorted(p.name for p in exported.iterdir()) == ["adapter", "merged", "parity.json", "seq-cls"]
    assert not list(exported.parent.glob(".*tmp"))  # the temporary directory is gone
    for fmt in ("adapter", "merged", "seq-cls"):
        meta = json.loads((exported / fmt / "tuner.json").read_text())
        assert meta["format"] == fmt
        assert meta["instruction"] == RUN_INSTRUCTION
        assert meta["calibration"] == {"temperature": 2.0, "bias": 0.25}
        assert meta["contract"]["yes_token_id"] == 9693 and meta["contract"]["no_token_id"] == 2152
        parity = meta["parity"]
        assert parity["passed"] and parity["probes"] == len(PROBES)
        for name, row in parity["formats"].items():
            assert row["max_abs_logit_delta"] < 1e-4, name
        assert set(parity["formats"]) == {"adapter", "merged", "merged (model-card code)", "seq-cls"}
        assert parity["template"]["prompt_strings_equal"] == len(PROBES)
        assert parity["template"]["token_ids_equal"] == len(PROBES)
        card = (exported / fmt / "README.md").read_text()
        assert "## Parity" in card and "## Evaluation" in card and "0.3580" in card
        assert str(exported / fmt) in card  # exact load commands name the export's path
        assert "checkpoint-30" not in card  # bookkeeping rows stay out of the eval table
        assert (exported / fmt / "recipe.yaml").read_text() in card and "data/scifact" in card
    config = json.loads((exported / "seq-cls" / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForSequenceClassification"]
    assert len(config["id2label"]) == 1 and config.get("num_labels", 1) == 1
    assert config["pad_token_id"] == 151643
    merged_card = (exported / "merged" / "README.md").read_text()
    assert "is_original_qwen3_reranker" in merged_card and "--chat-template" in merged_card
    assert "is_original_qwen3_reranker" not in (exported / "seq-cls" / "README.md").read_text()
    # the probe set exercises truncation: the long document fills the probe budget
    reranker = Reranker.from_pretrained(exported / "merged", device="cpu", dtype="float32", max_length=192)
    assert max(len(x) for x in reranker.encode(PROBES)) == 192


def _card_snippet(card: str, section: str) -> str:
    """The first python block after `### section` in a model card."""
    rest = card.split(f"### {section}\n", 1)[1]
    return rest.split("```python\n", 1)[1].split("```", 1)[0]


def _check_the_cards_transformers_code(export_dir) -> None:
    """Run the card's transformers snippet as written: it must give tuner's fp32 logit, and refuse a prompt over
    max_length rather than score one tuner would cut (only the document)."""
    snippet = _card_snippet((export_dir / "README.md").read_text(), "transformers")
    assert snippet.count("dtype=torch.float32") == 1
    scope: dict = {}
    exec(snippet, scope)  # the card's own code, on this test's export
    pair = ("what produces lift?", "Lift comes from pressure.")
    tuner_logit = Reranker.from_pretrained(export_dir, device="cpu", dtype="float32").score_pairs(
        [pair], normalize=False
    )[0]
    assert float(scope["logit"]) == pytest.approx(tuner_logit, abs=1e-4)
    with pytest.raises(AssertionError, match="max_length"):
        exec(snippet.replace("Lift comes from pressure.", "lift " * 600), {})


@pytest.mark.parametrize("fmt", ["adapter", "merged", "seq-cls"])
def test_the_cards_transformers_code_as_written_scores_as_tuner_does(exported, fmt):
    """The adapter card loaded the base without dtype=: transformers then used its config's dtype (bfloat16 for
    Qwen3-Reranker-4B) and the logit moved (-19.75 against tuner's -19.624). A bf16 export: see below."""
    _check_the_cards_transformers_code(exported / fmt)


def test_reranker_loads_all_three_formats_with_instruction_and_calibration(exported, run_dir, tiny_reranker):
    from peft import PeftModel

    pairs = [("what produces lift?", "Lift comes from the pressure difference."), ("q", "Bananas are yellow.")]
    # the training-time scorer: base + adapter, with the run's instruction
    base_logits = tiny_reranker.score_pairs(pairs, instruction=RUN_INSTRUCTION, normalize=False)
    base = type(tiny_reranker.model).from_pretrained(tiny_reranker.model.name_or_path, dtype=torch.float32)
    adapted = Reranker(PeftModel.from_pretrained(base, run_dir / "adapter").eval(), tiny_reranker.tokenizer)
    expected = adapted.score_pairs(pairs, instruction=RUN_INSTRUCTION, normalize=False)
    assert max(abs(a - b) for a, b in zip(base_logits, expected, strict=True)) > 1e-3  # the adapter matters
    for fmt in ("adapter", "merged", "seq-cls"):
        reranker = Reranker.from_pretrained(exported / fmt, device="cpu", dtype="float32")
        assert reranker.instruction == RUN_INSTRUCTION  # picked up from tuner.json
        assert reranker.calibration == {"temperature": 2.0, "bias": 0.25}
        logits = reranker.score_pairs(pairs, normalize=False)
        assert logits == pytest.approx(expected, abs=1e-4), fmt
        probs = reranker.score_pairs(pairs)
        calibrated = [torch.sigmoid(torch.tensor(x / 2.0 + 0.25)).item() for x in logits]
        assert probs == pytest.approx(calibrated, abs=1e-6)
        # what other engines return: sigmoid(logit), on request
        raw = Reranker.from_pretrained(exported / fmt, device="cpu", dtype="float32", calibrated=False)
        assert raw.score_pairs(pairs) == pytest.approx([torch.sigmoid(torch.tensor(x)).item() for x in logits])
        # the budget the card gives sentence-transformers and vLLM (tuner.json's max_length), unless overridden
        meta = json.loads((exported / fmt / "tuner.json").read_text())
        assert reranker.encoder.max_length == meta["max_length"] != 8192
        assert AutoTokenizer.from_pretrained(exported / fmt).padding_side == "left"  # the card's batch code


def test_corrupted_weight_fails_the_gate_and_leaves_nothing(run_dir, tmp_path, monkeypatch, capsys):
    original = export_mod.save_model

    def corrupt_then_save(model, path, max_shard_size):
        # a deliberately corrupted weight: one layer's MLP output projection is shifted before it is written
        with torch.no_grad():
            model.model.layers[0].mlp.down_proj.weight.add_(0.05)
        original(model, path, max_shard_size)

    monkeypatch.setattr(export_mod, "save_model", corrupt_then_save)
    out = tmp_path / "exports" / "broken"
    code = main(["export", str(run_dir), "--out", str(out), "--format", "merged", "--device", "cpu"])
    assert code == 3
    err = capsys.readouterr().err
    assert "parity gate failed" in err and "merged" in err
    assert not out.exists()
    assert list((tmp_path / "exports").iterdir()) == []  # no temporary directory either


def test_bfloat16_export_passes_a_gate_that_measures_the_export_not_bf16_inference(run_dir, tmp_path):
    """Each format is loaded back in fp32 (bf16 weights upcast exactly): the adapter (its weights are not cast) must
    equal the training-time scorer, merged and seq-cls the in-memory weights they were written from, to fp32
    precision; only the rounding of the weights to bf16 is held to the looser bf16 tolerance. (The gate used to
    score bf16 loads against the fp32 reference: a trained tiny run failed on bf16 inference noise alone, adapter
    0.356 included.)"""
    from safetensors import safe_open

    report = export(run_dir / "adapter", tmp_path / "bf16", dtype="bfloat16", device="cpu")
    assert report["passed"] and report["loaded_back_in"] == "float32"
    assert report["tolerance"] == {"atol": 5e-2, "rtol": 5e-2}
    for name, row in report["formats"].items():
        assert row["max_abs_logit_delta"] < 1e-4, name
    assert report["formats"]["adapter"]["compared_with"] == "reference"
    rounding = report["in_memory"]["merged, weights rounded to bfloat16"]
    assert rounding["passed"] and 0 < rounding["max_abs_logit_delta"] < 5e-2  # the honest cost of bf16 weights
    assert report["in_memory"]["merged"]["max_abs_logit_delta"] < 1e-4  # the merge itself, before rounding
    for fmt in ("merged", "seq-cls"):
        assert '"dtype": "bfloat16"' in (tmp_path / "bf16" / fmt / "config.json").read_text()
        with safe_open(str(tmp_path / "bf16" / fmt / "model.safetensors"), framework="pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}  # noqa: SIM118 (not iterable)
        # config.json says bfloat16: the card's code, as written, must still load in float32 and score as tuner
        _check_the_cards_transformers_code(tmp_path / "bf16" / fmt)


def _drop_the_lora(monkeypatch):
    from peft.tuners.lora import LoraModel

    # the "merge" returns the base without the adapter's update
    monkeypatch.setattr(LoraModel, "merge_and_unload", lambda self, *a, **k: self.unload())


def _corrupt_a_layer(monkeypatch):
    original = export_mod.save_model

    def corrupt_then_save(model, path, max_shard_size):
        with torch.no_grad():  # a small shift: within the bf16 tolerance of the old gate
            model.model.layers[0].mlp.down_proj.weight.add_(2e-3)
        original(model, path, max_shard_size)

    monkeypatch.setattr(export_mod, "save_model", corrupt_then_save)


def _flip_the_head(monkeypatch):
    original = export_mod.save_model

    def flip_then_save(model, path, max_shard_size):
        if hasattr(model, "score"):
            with torch.no_grad():
                model.score.weight.neg_()
        original(model, path, max_shard_size)

    monkeypatch.setattr(export_mod, "save_model", flip_then_save)


@pytest.mark.parametrize(
    ("damage", "fmt", "failed"),
    [(_drop_the_lora, "merged", "merged"), (_corrupt_a_layer, "merged", "merged"), (_flip_the_head, "seq-cls", "seq")],
)
def test_a_broken_bfloat16_export_fails_the_gate(run_dir, tmp_path, monkeypatch, damage, fmt, failed):
    damage(monkeypatch)
    with pytest.raises(export_mod.ParityError, match=rf"parity gate failed \(bfloat16.*{failed}"):
        export(run_dir / "adapter", tmp_path / "bad", formats=[fmt], dtype="bfloat16", device="cpu")
    assert not (tmp_path / "bad").exists()


def test_a_chat_template_that_does_not_render_the_contracts_prompt_fails_the_gate(run_dir, tmp_path, monkeypatch):
    """Weights intact, template wrong (here: it falls back to the model card's instruction, not the run's): vLLM and
    sentence-transformers would score other prompts than tuner, so nothing is written."""
    from tuner.chat_template import build_chat_template

    monkeypatch.setattr(export_mod, "build_chat_template", lambda instruction: build_chat_template(None))
    with pytest.raises(export_mod.ParityError) as raised:
        export(run_dir / "adapter", tmp_path / "bad", formats=["adapter"], device="cpu")
    # said in words, after the weights' rows (none failed here), not as a dict after a stray "; "
    assert re.search(
        r"\(float32, logits in fp32\): the chat template rendered the contract's prompt for \d of 9 probes "
        r"\(\d with its token ids\); nothing was written",
        str(raised.value),
    ), raised.value
    assert not (tmp_path / "bad").exists()


def test_the_cards_max_length_check_lets_a_prompt_of_exactly_max_length_through(tmp_path):
    """tuner scores a prompt of exactly `max_length` tokens: the card's transformers code must not refuse it."""
    from tuner.export_card import model_card

    for fmt in ("adapter", "merged", "seq-cls"):
        card = model_card(tmp_path / fmt, {"format": fmt, "base_model": "/x", "max_length": 300})
        assert "assert ids['input_ids'].shape[1] <= 300, 'over max_length" in card, fmt


def test_the_cards_parity_table_says_which_rows_passed(tmp_path):
    """The card's parity table is what a reader of a pushed export checks: a passing row says yes, a failing one NO
    (a table of a passing export showing NO, or the reverse, misreports the export)."""
    from tuner.export_card import model_card

    row = {"max_abs_logit_delta": 1e-6, "passed": True, "compared_with": "reference", "tolerance": "float32"}
    parity = {
        "reference": "in-memory PEFT model, fp32, tuner Reranker",
        "dtype": "float32",
        "loaded_back_in": "float32",
        "tolerance": {"atol": 1e-4, "rtol": 0.0},
        "exact_tolerance": {"atol": 1e-4, "rtol": 0.0},
        "probes": 9,
        "in_memory": {"merged": row},
        "formats": {"merged": row, "seq-cls": {**row, "max_abs_logit_delta": 0.5, "passed": False}},
        "template": {"probes": 9, "prompt_strings_equal": 9, "token_ids_equal": 9},
    }
    card = model_card(tmp_path / "m", {"format": "merged", "base_model": "/x", "parity": parity})
    assert "| merged (in memory) | 1.00e-06 | yes |" in card
    assert "| merged | 1.00e-06 | yes |" in card and "| seq-cls | 5.00e-01 | NO |" in card
    assert "| 9/9 strings, 9/9 token ids equal | yes |" in card
    parity["template"] = {"probes": 9, "prompt_strings_equal": 9, "token_ids_equal": 8}
    card = model_card(tmp_path / "m", {"format": "merged", "base_model": "/x", "parity": parity})
    assert "| 9/9 strings, 8/9 token ids equal | NO |" in card  # the gate needs both


def test_a_gate_row_fails_when_any_one_probe_is_out_of_tolerance():
    """Damage that moves one probe only (the truncated document, a non-English pair, the empty instruction) must
    fail its row; the bf16 tolerance grows with |logit| of the reference (0.05 + 0.05·|logit|)."""
    ref = [1.0, -2.0, 10.0]
    assert export_mod._compare(ref, ref, "float32", "reference")["passed"]
    row = export_mod._compare([1.0, -1.5, 10.0], ref, "float32", "reference")
    assert not row["passed"] and row["worst_probe"] == 1 and row["max_abs_logit_delta"] == 0.5
    assert export_mod._compare([1.0, -2.0, 10.5], ref, "bfloat16", "reference")["passed"]  # within 0.55 at 10
    assert not export_mod._compare([1.0, -1.8, 10.0], ref, "bfloat16", "reference")["passed"]  # over 0.15 at -2


def test_user_errors_are_one_line(tmp_path, run_dir, capsys):
    assert main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "no such run or adapter directory" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    assert main(["export", str(run_dir), "--out", str(tmp_path / "taken"), "--format", "adapter"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def test_an_export_or_model_folder_given_as_the_source_is_named_as_such(tmp_path, capsys):
    """`tuner export exp2/merged` (an export, not a run) said "no such run or adapter directory" of a folder that
    exists: it names what the folder is and what export reads instead."""
    merged = tmp_path / "exp2" / "merged"
    merged.mkdir(parents=True)
    (merged / "config.json").write_text("{}")
    (merged / "tuner.json").write_text(json.dumps({"format": "merged"}))
    assert main(["export", str(merged), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{merged}: a tuner export (merged format" in err and "not a training run" in err
    assert "a training run (RUN, with RUN/adapter/) or an adapter directory (adapter_config.json)" in err
    assert "no such" not in err and err.count("\n") == 1
    (merged / "tuner.json").unlink()  # a model folder of any other origin
    assert main(["export", str(merged), "--out", str(tmp_path / "o")]) == 2
    assert "a full model folder (config.json, no adapter_config.json)" in capsys.readouterr().err


def test_an_out_that_is_or_holds_an_input_is_refused(tmp_path, run_dir, tiny_model_dir, capsys):
    """An export replaces its whole --out: one that is, or holds, the run, its adapter or its base would delete
    them, so it is refused even with --overwrite, and nothing is touched."""
    run = tmp_path / "nest" / "run"
    shutil.copytree(run_dir, run)
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    cases = [(run, "source"), (run.parent, "source"), (run / "adapter", "adapter"), (base, "base model")]
    for out, what in cases:
        argv = ["export", str(run), "--out", str(out), "--base", str(base), "--format", "adapter", "--overwrite"]
        assert main(argv) == 2
        assert f"would replace the {what} " in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_checkpoint_exports_with_its_runs_recipe_and_settings(run_dir, tmp_path):
    """A checkpoint (run/checkpoints/checkpoint-N, with the tuner.json the trainer writes into it) exports with the
    run's recipe.yaml from two folders up and its own max_length, not with none and 8192."""
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-5"
    shutil.copytree(run_dir / "adapter", checkpoint)
    shutil.copy(run_dir / "config.yaml", tmp_path / "run" / "config.yaml")
    out = tmp_path / "export"
    assert main(["export", str(checkpoint), "--out", str(out), "--format", "adapter", "--device", "cpu"]) == 0
    assert (out / "recipe.yaml").read_text() == (run_dir / "config.yaml").read_text()
    meta = json.loads((out / "tuner.json").read_text())
    assert meta["max_length"] == 512 and meta["instruction"] == RUN_INSTRUCTION


def test_a_checkpoint_exported_after_an_instruction_was_applied_to_its_run_says_so(
    run_dir, tmp_path, caplog, monkeypatch
):
    """`tuner instruct --apply RUN` rewrites RUN/adapter's instruction alone; a checkpoint exported afterwards
    served the recipe's instruction by default without a word. It still does (its own was never searched), but
    the export says which instruction the run was given and how to apply it to the checkpoint."""
    import tuner.export as export_module

    run = tmp_path / "run"
    checkpoint = run / "checkpoints" / "checkpoint-5"
    shutil.copytree(run_dir / "adapter", checkpoint)
    shutil.copytree(run_dir / "adapter", run / "adapter")
    shutil.copy(run_dir / "config.yaml", run / "config.yaml")

    class Stop(Exception):
        pass

    def stop(*args):  # the check comes before the model loads: none is needed to see that nothing is said
        raise Stop

    with monkeypatch.context() as patch, caplog.at_level("WARNING", logger="tuner.export"), pytest.raises(Stop):
        patch.setattr(export_module, "_tokenizer_for", stop)
        export_module.export(checkpoint, tmp_path / "same", formats=["adapter"], device="cpu")
    assert "after training" not in caplog.text  # the run's adapter has the checkpoint's instruction: nothing said
    argv = ["export", str(checkpoint), "--format", "adapter", "--device", "cpu", "--overwrite"]
    meta = json.loads((run / "adapter" / "tuner.json").read_text())
    (run / "adapter" / "tuner.json").write_text(json.dumps({**meta, "instruction": "Find the applied thing"}))
    with caplog.at_level("WARNING", logger="tuner.export"):
        assert main([*argv, "--out", str(tmp_path / "applied")]) == 0
    assert 'its run\'s adapter was given "Find the applied thing" after training' in caplog.text
    assert f"--apply {checkpoint})" in caplog.text
    assert json.loads((tmp_path / "applied" / "tuner.json").read_text())["instruction"] == RUN_INSTRUCTION


def test_a_full_fine_tunes_checkpoint_exported_after_an_instruction_was_applied_to_its_run_says_so(
    tmp_path, caplog, monkeypatch
):
    """The same for a run with lora.enabled=false: `tuner instruct --apply RUN` rewrites RUN/model's tuner.json,
    which the check did not read (it looked for RUN/adapter only), so its checkpoints were exported in silence."""
    import tuner.export as export_module

    run = tmp_path / "full"
    checkpoint = run / "checkpoints" / "checkpoint-5"
    meta = {"base_model": "Qwen/Qwen3-Reranker-4B", "max_length": 256, "recipe": "full"}
    for folder, instruction in ((checkpoint, RUN_INSTRUCTION), (run / "model", "Find the applied thing")):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        (folder / "tuner.json").write_text(json.dumps({**meta, "instruction": instruction}))

    class Stop(Exception):
        pass

    def stop(*args):  # the warning comes before the model loads: none is needed
        raise Stop

    monkeypatch.setattr(export_module, "_tokenizer_for", stop)
    with caplog.at_level("WARNING", logger="tuner.export"), pytest.raises(Stop):
        export_module.export(checkpoint, tmp_path / "o", formats=["merged"], device="cpu")
    assert 'its run\'s model was given "Find the applied thing" after training' in caplog.text


def test_the_cards_vllm_line_serves_the_name_tuner_serve_answers_to(tmp_path):
    """The card's `vllm serve` line had no --served-model-name: vLLM answered to the export's path, while `tuner
    serve` (and the line `tuner serve --engine vllm` prints) answer to the export's name, so a client's `model`
    got 404 from one of them."""
    from tuner.export_card import model_card

    meta = {"format": "seq-cls", "base_model": "Qwen/Qwen3-Reranker-4B"}
    card = model_card(tmp_path / "quick-export" / "seq-cls", meta, name="quick-export")
    assert "--max-model-len 8192 --served-model-name quick-export\n" in card
    assert "--served-model-name single\n" in model_card(tmp_path / "single", meta)  # a one-format export: its folder


def test_the_card_names_the_base_as_the_recipe_gave_it_not_this_machines_path(tmp_path):
    """A card shipped to a hub said `Base model: /home/me/runs/x/tiny-model`: a path on the trainer's machine."""
    from tuner.export_card import model_card

    meta = {"format": "merged", "base_model": "/home/me/models/Qwen3-Reranker-4B"}
    card = model_card(tmp_path / "out", {**meta, "recipe": {"model": {"name_or_path": "Qwen/Qwen3-Reranker-4B"}}})
    assert "- **Base model:** `Qwen/Qwen3-Reranker-4B`" in card and "/home/me" not in card
    card = model_card(tmp_path / "out", {**meta, "recipe": {"model": {"name_or_path": "/home/me/models/Q3"}}})
    assert "- **Base model:** a local copy, `Q3`" in card  # (the recipe section below keeps what the user wrote)
    card = model_card(tmp_path / "out", {**meta, "recipe": {"model": {"name_or_path": "x", "tiny": True}}})
    assert "- **Base model:** a random tiny Qwen3 (`model.tiny`; not a published model)" in card
    assert "- **Base model:** a local copy, `Qwen3-Reranker-4B`" in model_card(tmp_path / "out", meta)
    assert "- **Base model:** `Qwen/Qwen3-Reranker-4B`" in model_card(
        tmp_path / "out", {**meta, "base_model": "Qwen/Qwen3-Reranker-4B"}
    )


def test_the_cards_data_line_names_what_the_run_trained_on(tmp_path):
    """A run of the tiny recipe with `data.train_file=runs/tr.jsonl` kept the recipe's `data.beir: data/scifact`,
    which the card listed as its data, though training read only the file."""
    from tuner.export_card import model_card

    data = {"train_file": "runs/tr.jsonl", "beir": "data/scifact", "split": "train", "num_negatives": 15,
            "group_size": 8}  # fmt: skip
    card = model_card(tmp_path / "out", {"format": "merged", "recipe": {"data": data}})
    assert '- **Data:** `{"train_file": "runs/tr.jsonl", "group_size": 8}`' in card
    mined = {**data, "train_file": None}  # mined from the BEIR folder: its split and mining settings are the data
    card = model_card(tmp_path / "out", {"format": "merged", "recipe": {"data": mined}})
    assert '"beir": "data/scifact", "split": "train", "num_negatives": 15' in card


def test_the_cards_evaluation_says_what_it_was_measured_on(tmp_path):
    """The card's Evaluation table (first_stage, base, final) named no data: a run with eval.data printed its
    groups' random order as "first_stage", which a reader of a published card takes for a retriever."""
    from tuner.export_card import model_card

    meta = {"format": "merged", "recipe": "bikes", "eval": {"first_stage": {"ndcg@10": 0.55}, "final": {"ndcg@10": 1}}}
    card = model_card(tmp_path / "out", meta, "name: bikes\neval:\n  data: /home/me/runs/dev.jsonl\n")
    assert "Measured on `dev.jsonl` (each group's documents ranked whole); first_stage is their seeded random" in card
    card = model_card(tmp_path / "out", meta, "name: bikes\neval:\n  beir: /d/bikes\n  split: dev\n  top_k: 20\n")
    assert "Measured on `bikes` (dev qrels), reranking BM25's top 20; first_stage is BM25." in card
    assert "Measured on" not in model_card(tmp_path / "out", {**meta, "eval": None}, "eval:\n  data: dev.jsonl\n")
    # a folder of labeled files names the split file it read, and eval.max_queries says the figures are a sample
    (tmp_path / "labeled").mkdir()
    card = model_card(
        tmp_path / "out", meta, f"eval:\n  data: {tmp_path / 'labeled'}\n  split: dev\n  max_queries: 50\n"
    )
    assert (
        "Measured on `labeled` (its dev file, each group's documents ranked whole, a seeded sample of 50 queries)"
        in card
    )
    card = model_card(tmp_path / "out", meta, "eval:\n  beir: /d/bikes\n  top_k: 20\n  max_queries: 50\n")
    assert "Measured on `bikes` (test qrels, a seeded sample of 50 queries), reranking BM25's top 20" in card


def test_the_card_carries_the_hubs_metadata_so_a_pushed_export_links_to_its_base(tmp_path):
    """`hf upload` of an export: the hub reads the YAML block at the top of README.md (huggingface_hub's parser
    here) to list it under text-ranking and link it to its base, as an adapter or a fine-tune."""
    from huggingface_hub import ModelCard

    from tuner.export_card import model_card

    hub = {"model": {"name_or_path": "Qwen/Qwen3-Reranker-4B"}}
    expected = {"adapter": ("peft", "adapter"), "merged": ("transformers", "finetune"),
                "seq-cls": ("transformers", "finetune")}  # fmt: skip
    for fmt, (library, relation) in expected.items():
        data = ModelCard(model_card(tmp_path / fmt, {"format": fmt, "base_model": "/x", "recipe": hub})).data
        assert data.base_model == "Qwen/Qwen3-Reranker-4B" and data.base_model_relation == relation, fmt
        assert data.library_name == library and data.pipeline_tag == "text-ranking" and data.license == "apache-2.0"
        assert "reranker" in data.tags
    # a local or tiny base has no hub id to link to, and no license tuner could know
    for recipe in ({"model": {"name_or_path": "/home/me/models/Q3"}}, {"model": {"name_or_path": "x", "tiny": True}}):
        data = ModelCard(model_card(tmp_path / "m", {"format": "merged", "base_model": "/x", "recipe": recipe})).data
        assert data.base_model is None and data.license is None and data.pipeline_tag == "text-ranking"
    full = {**hub, "lora": {"enabled": False}}  # a full fine-tune is not tagged lora
    assert "lora" not in ModelCard(model_card(tmp_path / "f", {"format": "merged", "recipe": full})).data.tags
    card = model_card(tmp_path / "m", {"format": "merged", "base_model": "/x", "recipe": hub})
    assert card.startswith("---\n") and "\n---\n\n# m: Qwen3-Reranker LoRA fine-tune, merged causal LM" in card


def test_exporting_a_calibrated_run_gives_no_warning_about_the_gates_probe_budget(run_dir, tmp_path, recwarn):
    """`tuner calibrate --apply` records the max_length it fitted at; the gate loads each format back at its probe
    budget (192), and every export of a calibrated run warned that "the probabilities of these scores are not
    calibrated (refit with tuner calibrate ...)", of scores the gate reads as logits. The calibration is still
    exported."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    meta = json.loads((run / "adapter" / "tuner.json").read_text())
    meta["calibration"] = {"temperature": 2.0, "bias": 0.25, "instruction": RUN_INSTRUCTION, "max_length": 512}
    (run / "adapter" / "tuner.json").write_text(json.dumps(meta))
    export(run, tmp_path / "out", formats=["adapter"], device="cpu")
    assert not [w for w in recwarn if "calibrat" in str(w.message)]
    assert json.loads((tmp_path / "out" / "tuner.json").read_text())["calibration"] == meta["calibration"]


def test_an_out_whose_parent_cannot_be_written_is_refused_before_the_model_loads(
    run_dir, tmp_path, monkeypatch, capsys
):
    """An export (and a merge) is written beside --out and renamed into place: an existing --out the user may write
    in, inside a folder they may not (a shared models folder, a read-only mount), passed the check and failed only
    after the model had loaded and been scored, naming a hidden temporary folder instead of --out."""
    import os

    from tuner import files

    parent = tmp_path / "shared"
    (parent / "mine").mkdir(parents=True)
    access = os.access
    monkeypatch.setattr(files.os, "access", lambda p, mode: str(p) != str(parent) and access(p, mode))
    monkeypatch.setattr(export_mod, "export", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["export", str(run_dir), "--out", str(parent / "mine"), "--format", "adapter"]) == 2
    err = capsys.readouterr().err
    assert f"--out {parent / 'mine'}: no permission to write in {parent} (the new folder is written beside" in err
    assert err.count("\n") == 1
    assert main(["merge", str(run_dir), "--weights", "0.5", "--out", str(parent / "mine")]) == 2
    assert f"no permission to write in {parent}" in capsys.readouterr().err

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(files.tempfile, "mkdtemp", refused)  # what the check cannot see (root on a read-only mount)
    match = rf"cannot write {parent / 'mine'}: Permission denied in {parent}"
    with pytest.raises(OSError, match=match), files.atomic_dir(parent / "mine"):
        pass


def test_a_full_fine_tuning_run_exports_its_merged_and_seq_cls_formats(tiny_model_dir, tmp_path, capsys):
    """A run with lora.enabled=false writes RUN/model, no adapter: `tuner export RUN` said "neither an adapter
    directory nor a run with adapter/", so a full fine-tune could not reach sentence-transformers or vLLM (its
    model holds Qwen's own chat template, not the instruction's). Its whole model is the merged format already:
    `--format all` writes merged and seq-cls, through the same parity gate."""
    run = tmp_path / "full"
    shutil.copytree(tiny_model_dir, run / "model")
    (run / "config.yaml").write_text("name: full\nlora:\n  enabled: false\n")
    meta = {"base_model": str(tiny_model_dir), "max_length": 256, "instruction": RUN_INSTRUCTION, "recipe": "full"}
    (run / "model" / "tuner.json").write_text(json.dumps(meta))
    out = tmp_path / "o"
    assert main(["export", str(run), "--out", str(out), "--format", "all", "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["merged", "seq-cls"]
    report = json.loads((out / "parity.json").read_text())
    assert report["passed"] and report["reference"].startswith("in-memory fully fine-tuned model")
    source = Reranker.from_pretrained(run / "model", device="cpu", dtype="float32")
    pairs = [("what produces lift?", "Wings produce lift.", None), ("q", "Bananas.", "Find fruit facts")]
    for fmt in ("merged", "seq-cls"):
        loaded = Reranker.from_pretrained(out / fmt, device="cpu", dtype="float32")
        assert loaded.instruction == RUN_INSTRUCTION and loaded.max_length == 256
        assert loaded.score_pairs(pairs, normalize=False) == pytest.approx(
            source.score_pairs(pairs, normalize=False), abs=1e-5
        )
        card = (out / fmt / "README.md").read_text()
        assert "Qwen3-Reranker full fine-tune" in card and "- lora" not in card
        assert RUN_INSTRUCTION in (out / fmt / "chat_template.jinja").read_text()  # not Qwen's chat template
    capsys.readouterr()
    assert main(["export", str(run / "model"), "--out", str(tmp_path / "a"), "--format", "adapter"]) == 2
    assert (
        "a full fine-tuning run has no adapter to export; choose --format merged or seq-cls" in capsys.readouterr().err
    )
    assert main(["merge", str(run), str(run), "--out", str(tmp_path / "m")]) == 2
    assert f"`tuner export {run}` writes its merged and seq-cls formats" in capsys.readouterr().err
    assert main(["serve", "--engine", "vllm", str(run / "model")]) == 2
    assert f"run `tuner export {run / 'model'} --format seq-cls` (or merged) first" in capsys.readouterr().err


def test_an_export_replacing_one_with_a_calibration_applied_after_it_says_so(run_dir, tmp_path, caplog):
    """`tuner calibrate --apply EXPORT` (the README's way to calibrate an export already written), then `tuner export
    RUN --out EXPORT --overwrite` (another dtype, a newer tuner): the new export takes the run's tuner.json, and the
    calibration applied to the old one was gone without a word."""
    out = tmp_path / "export"
    export(run_dir, out, formats=["adapter"], device="cpu")
    meta = json.loads((out / "tuner.json").read_text())
    meta["calibration"] = {"temperature": 3.0, "bias": -1.0}  # what calibrate --apply EXPORT writes (in part)
    (out / "tuner.json").write_text(json.dumps(meta))
    with caplog.at_level("WARNING", logger="tuner.export"):
        export(run_dir, out, formats=["adapter"], device="cpu", overwrite=True)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name == "tuner.export"]
    assert len(warned) == 1  # the instruction is the run's: nothing to say of it
    assert f"{out / 'tuner.json'} had calibration {{'temperature': 3.0, 'bias': -1.0}}" in warned[0]
    assert f"tuner calibrate ... --apply {run_dir / 'adapter'}" in warned[0]
    assert json.loads((out / "tuner.json").read_text())["calibration"] == {"temperature": 2.0, "bias": 0.25}


def test_a_merged_export_naming_its_base_is_not_taken_for_a_full_fine_tuning_run(tmp_path, tiny_model_dir, capsys):
    """An export's tuner.json names its base_model too, as a full fine-tuning run's model does: its `format` is
    what tells them apart, so `tuner export EXPORT/merged` names the export instead of exporting it again."""
    from tuner.loading import full_fine_tune_dir

    merged = tmp_path / "exp" / "merged"
    shutil.copytree(tiny_model_dir, merged)
    (merged / "tuner.json").write_text(json.dumps({"format": "merged", "base_model": str(tiny_model_dir)}))
    assert full_fine_tune_dir(merged) is None and full_fine_tune_dir(tmp_path / "exp") is None
    assert main(["export", str(merged), "--out", str(tmp_path / "o")]) == 2
    assert f"{merged}: a tuner export (merged format" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    (merged / "tuner.json").write_text(json.dumps({"base_model": str(tiny_model_dir)}))  # what a run writes
    assert full_fine_tune_dir(merged) == merged


def test_a_merges_card_has_no_recipe_block_of_the_word_merge(tmp_path):
    """A merge's tuner.json records `"recipe": "merge"`; its card printed a "## Recipe" section holding a JSON block of
    the one string "merge" (the Merge line names the sources and weights). A recipe named alone is a line."""
    from tuner.export_card import model_card

    merge = {"sources": ["/r/a/checkpoint-2", "/r/a/checkpoint-4"], "weights": [0.5, 0.5], "rank": 8, "layers": 3}
    card = model_card(tmp_path / "m", {"format": "merged", "base_model": "/x", "recipe": "merge", "merge": merge})
    assert "## Recipe" not in card and '"merge"' not in card
    assert "- **Merge:** base + 0.5 × `checkpoint-2` + 0.5 × `checkpoint-4`" in card
    named = model_card(tmp_path / "n", {"format": "merged", "base_model": "/x", "recipe": "tiny-cpu"})
    assert "Recipe: `tiny-cpu`." in named and "```json" not in named
