"""`tuner merge`: a weighted sum of LoRA adapters of one base is W0 + Σ wᵢ·ΔWᵢ, written as an adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tuner.merge import merge_adapters
from tuner.scoring import Reranker


def _adapter(
    base: Path, out: Path, seed: int, r: int = 4, alpha: int = 8, rslora: bool = False, lora=None, **meta
) -> Path:
    """A LoRA adapter with random A and B (B starts at 0 in peft: nothing to merge) and the tuner.json training
    writes."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=r, lora_alpha=alpha, use_rslora=rslora, **{"target_modules": "all-linear", **(lora or {})}),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.2)
    model.save_pretrained(out)
    record = {
        "base_model": str(base),
        "instruction": None,
        "max_length": 128,
        "recipe": f"run{seed}",
        "eval": {"final": {"ndcg@10": 0.5}},
        "calibration": {"temperature": 2.0, "bias": 0.0},
        **meta,
    }
    (out / "tuner.json").write_text(json.dumps(record), encoding="utf-8")
    return out


def _merged_weights(base: Path, adapter: Path | None) -> dict[str, torch.Tensor]:
    """The full fp32 weights of base + adapter, merged by peft (the reference arithmetic)."""
    from peft import PeftModel

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


DOCS = ["Paris is the capital of France.", "Gravity pulls objects down.", "The Seine flows through Paris."]


def test_a_weighted_sum_of_adapters_is_the_weighted_sum_of_their_deltas(tiny_model_dir, tmp_path):
    a = _adapter(tiny_model_dir, tmp_path / "a", seed=1, r=4, alpha=8)
    b = _adapter(tiny_model_dir, tmp_path / "b", seed=2, r=8, alpha=8, rslora=True)  # other rank and scale rule
    w0, wa, wb = (_merged_weights(tiny_model_dir, x) for x in (None, a, b))
    record = merge_adapters([a, b], tmp_path / "soup", weights=[0.7, 0.3])
    assert record["rank"] == 12 and record["weights"] == [0.7, 0.3] and record["max_rel_diff_vs_weighted_sum"] < 1e-6
    got = _merged_weights(tiny_model_dir, tmp_path / "soup")
    changed = 0
    for key, base in w0.items():
        want = base + 0.7 * (wa[key] - base) + 0.3 * (wb[key] - base)
        assert torch.allclose(got[key], want, atol=1e-6, rtol=0), key
        changed += not torch.equal(want, base)
    assert changed > 10  # the adapters moved the linear layers: the check compares something

    meta = json.loads((tmp_path / "soup" / "tuner.json").read_text())
    assert meta["recipe"] == "merge" and meta["merge"]["sources"] == [str(a.resolve()), str(b.resolve())]
    assert meta["max_length"] == 128 and meta["eval"] == {} and "calibration" not in meta  # not the merge's
    # the merged adapter loads and scores like any adapter
    reranker = Reranker.from_pretrained(tmp_path / "soup", device="cpu", dtype="float32")
    assert reranker.encoder.max_length == 128
    assert any((tmp_path / "soup" / f).is_file() for f in ("tokenizer.json", "vocab.json"))


def test_one_adapter_at_a_weight_moves_it_towards_the_base(tiny_model_dir, tmp_path):
    # rslora: the merged config is the source's with scale 1, which rslora would turn into sqrt(r)
    a = _adapter(tiny_model_dir, tmp_path / "a", seed=3, r=8, alpha=4, rslora=True)
    logits = {}
    for w in (0.0, 0.5, 1.0):
        merge_adapters([a], tmp_path / f"w{w}", weights=[w])
        logits[w] = Reranker.from_pretrained(tmp_path / f"w{w}", device="cpu", dtype="float32").score(
            "capital of France", DOCS, normalize=False
        )
    base = Reranker.from_pretrained(tiny_model_dir, device="cpu", dtype="float32").score(
        "capital of France", DOCS, normalize=False
    )
    tuned = Reranker.from_pretrained(a, device="cpu", dtype="float32").score("capital of France", DOCS, normalize=False)
    assert logits[0.0] == pytest.approx(base, abs=1e-4) and logits[1.0] == pytest.approx(tuned, abs=1e-4)
    assert logits[0.5] != pytest.approx(base, abs=1e-3) and logits[0.5] != pytest.approx(tuned, abs=1e-3)
    # the default weights average: two copies of one run's adapter are that adapter
    import shutil

    shutil.copytree(a, tmp_path / "a-copy")
    merge_adapters([a, tmp_path / "a-copy"], tmp_path / "avg")
    avg = Reranker.from_pretrained(tmp_path / "avg", device="cpu", dtype="float32")
    assert avg.score("capital of France", DOCS, normalize=False) == pytest.approx(tuned, abs=1e-4)


def test_adapters_of_different_bases_are_refused(tiny_model_dir, tmp_path):
    import shutil

    other_base = Path(shutil.copytree(tiny_model_dir, tmp_path / "other-base"))
    a = _adapter(tiny_model_dir, tmp_path / "a", seed=1)
    b = _adapter(other_base, tmp_path / "b", seed=2)
    with pytest.raises(ValueError, match="the adapters have different bases"):
        merge_adapters([a, b], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_merge_that_is_not_the_weighted_sum_is_not_written(tiny_model_dir, tmp_path, monkeypatch):
    from peft.tuners.lora import LoraModel

    original = LoraModel.add_weighted_adapter

    def off_by_a_little(self, *args, **kwargs):  # a combination that is not W0 + Σ wᵢ·ΔWᵢ
        original(self, *args, **kwargs)
        layer = next(m for m in self.modules() if "default" in getattr(m, "lora_B", {}))
        with torch.no_grad():
            layer.lora_B["default"].weight.add_(0.01)

    monkeypatch.setattr(LoraModel, "add_weighted_adapter", off_by_a_little)
    a = _adapter(tiny_model_dir, tmp_path / "a", seed=1)
    b = _adapter(tiny_model_dir, tmp_path / "b", seed=2)
    with pytest.raises(ValueError, match=r"differs from the weighted sum .*nothing written"):
        merge_adapters([a, b], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_adapters_that_cannot_be_summed_are_named_and_nothing_is_written(tiny_model_dir, tmp_path):
    a = _adapter(tiny_model_dir, tmp_path / "a", seed=1)
    other = _adapter(tiny_model_dir, tmp_path / "b", seed=2, instruction="Find laws")
    with pytest.raises(ValueError, match=r"disagree on the instruction: None in .*a but 'Find laws' in .*b"):
        merge_adapters([a, other], tmp_path / "out")
    longer = _adapter(tiny_model_dir, tmp_path / "c", seed=2, max_length=256)
    with pytest.raises(ValueError, match="disagree on max_length"):
        merge_adapters([a, longer], tmp_path / "out")
    with pytest.raises(ValueError, match="2 weights for 1 adapters"):
        merge_adapters([a], tmp_path / "out", weights=[0.5, 0.5])
    with pytest.raises(ValueError, match="nan is not a finite number"):
        merge_adapters([a], tmp_path / "out", weights=[float("nan")])
    with pytest.raises(ValueError, match="the same adapter is given twice"):
        merge_adapters([a, a], tmp_path / "out")
    with pytest.raises(ValueError, match="would replace the adapter #1"):
        merge_adapters([a], a)
    biased = _adapter(tiny_model_dir, tmp_path / "bias", seed=2, lora={"lora_bias": True})
    with pytest.raises(ValueError, match=r"bias.*trains bias terms"):
        merge_adapters([a, biased], tmp_path / "out")
    per_layer = _adapter(tiny_model_dir, tmp_path / "pattern", seed=2, lora={"rank_pattern": {"q_proj": 2}})
    with pytest.raises(ValueError, match="per-layer ranks"):
        merge_adapters([per_layer], tmp_path / "out", weights=[0.5])
    some_layers = _adapter(
        tiny_model_dir, tmp_path / "layers", seed=2, lora={"layers_to_transform": [0], "target_modules": ["q_proj"]}
    )
    with pytest.raises(ValueError, match="select layers differently"):
        merge_adapters([some_layers, a], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no such run or adapter directory"):
        merge_adapters([a, tmp_path / "nope"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    with pytest.raises(ValueError, match="already holds files"):
        merge_adapters([a], tmp_path / "full", weights=[0.5])
    assert (tmp_path / "full" / "x").read_text() == "keep"


def test_cli_merge_writes_an_adapter_that_eval_and_export_take(tiny_model_dir, tmp_path, capsys):
    from tuner.cli import main

    run = tmp_path / "run"
    _adapter(tiny_model_dir, run / "adapter", seed=4)
    out = tmp_path / "half"
    assert main(["merge", str(run), "--weights", "0.5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"0.5 x {(run / 'adapter').resolve()}" in printed and "rank 4 over" in printed
    assert main(["merge", str(run), "--weights", "0.5", "0.5", "--out", str(tmp_path / "o")]) == 2
    assert "2 weights for 1 adapters" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert main(["merge", str(run), "--out", str(out)]) == 2  # exists: --overwrite replaces it
    assert "already holds files" in capsys.readouterr().err
    # the merge is an adapter: exported with the parity gate like a run's
    assert main(["export", str(out), "--format", "merged", "--out", str(tmp_path / "export")]) == 0
    assert "parity gate passed" in capsys.readouterr().out


def test_sources_that_select_the_same_layers_in_another_order_merge(tmp_path):
    """peft writes a set of excluded modules in hash order: the same selection must not read as two."""
    from tuner.merge import _sources

    for name, order in (("a", ["x.q_proj", "y.k_proj"]), ("b", ["y.k_proj", "x.q_proj"]), ("c", ["x.q_proj"])):
        (tmp_path / name).mkdir()
        config = {"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"], "exclude_modules": order}
        (tmp_path / name / "adapter_config.json").write_text(json.dumps(config))
    assert len(_sources([tmp_path / "a", tmp_path / "b"])) == 2
    with pytest.raises(ValueError, match="select layers differently"):
        _sources([tmp_path / "a", tmp_path / "c"])


def test_an_export_of_a_merge_keeps_what_it_merged(tiny_model_dir, tmp_path):
    """The export of a `tuner merge` adapter dropped its tuner.json `merge` record: the exported soup's tuner.json
    and model card said `recipe: "merge"` and nothing of which adapters it summed, at which weights."""
    from tuner.export import export

    run = tmp_path / "run"
    _adapter(tiny_model_dir, run / "adapter", seed=1)
    (run / "checkpoints").mkdir()
    checkpoint = _adapter(tiny_model_dir, run / "checkpoints" / "checkpoint-5", seed=2)
    record = merge_adapters([run, checkpoint], tmp_path / "soup", weights=[0.75, 0.25])
    export(tmp_path / "soup", tmp_path / "export", formats=["adapter"], device="cpu")
    meta = json.loads((tmp_path / "export" / "tuner.json").read_text())
    assert meta["merge"] == record
    card = (tmp_path / "export" / "README.md").read_text()
    line = next(x for x in card.splitlines() if x.startswith("- **Merge:**"))
    assert line.startswith("- **Merge:** base + 0.75 × `run` + 0.25 × `run/checkpoint-5`")
    assert str(tmp_path) not in line  # names, not this machine's paths


def test_a_sources_calibration_is_not_carried_and_the_merge_says_so(tiny_model_dir, tmp_path, caplog):
    """`tuner calibrate --apply RUN`, then `tuner merge RUN --weights 0.5`: the fit (on the run's logits) is rightly
    left out of the merge, but without a word the merge's probabilities were silently uncalibrated."""
    a = _adapter(tiny_model_dir, tmp_path / "a", seed=1)  # _adapter records a calibration
    with caplog.at_level("WARNING", logger="tuner.merge"):
        merge_adapters([a], tmp_path / "half", weights=[0.5])
    assert "calibration" not in json.loads((tmp_path / "half" / "tuner.json").read_text())
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and f"the calibration of {a} is not carried into {tmp_path / 'half'}" in warned[0]
    assert f"--apply {tmp_path / 'half'}" in warned[0]


def test_adapters_that_are_not_plain_lora_are_named_before_any_model_loads(tmp_path):
    """What peft's "cat" sum cannot add up is refused by folder: another PEFT type, DoRA, whole trained modules, a
    trained bias (`bias`, as `lora_bias`), per-layer alphas alone, a selection by layers_pattern or by a target
    regex that the other sources do not share."""
    from tuner.merge import _sources

    def adapter(name, **config):
        (tmp_path / name).mkdir()
        config = {"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"], **config}
        (tmp_path / name / "adapter_config.json").write_text(json.dumps(config))
        return tmp_path / name

    plain = adapter("plain")
    cases = [
        (adapter("ia3", peft_type="IA3"), "ia3: a IA3 adapter; tuner merge sums LoRA adapters"),
        (adapter("dora", use_dora=True), "dora: a DoRA adapter"),
        (adapter("saves", modules_to_save=["score"]), r"saves: trains whole modules too \(modules_to_save\)"),
        (adapter("bias", bias="lora_only"), r"bias: trains bias terms"),
        (adapter("layers", layers_pattern="layers"), r"select layers differently \(layers_pattern"),
        (adapter("regex", target_modules=".*q_proj"), "regex names its target modules by a pattern"),
    ]
    for folder, message in cases:
        with pytest.raises(ValueError, match=message):
            _sources([plain, folder])
    with pytest.raises(ValueError, match="alpha: per-layer ranks"):
        _sources([adapter("alpha", alpha_pattern={"q_proj": 16})])


def test_a_merge_made_on_another_base_records_it_and_holds_the_merge_alone(tiny_model_dir, tmp_path):
    """`tuner merge --base B` (the sources' recorded base moved away): the merge's tuner.json names B, which it was
    made on and loads on, not the sources' unreachable path; the folder holds the merged adapter only, not a copy of
    each source beside it. An --out that is the base itself is refused before anything loads."""
    import shutil

    a = _adapter(tiny_model_dir, tmp_path / "a", seed=1, base_model=str(tmp_path / "moved-away"))
    merge_adapters([a], tmp_path / "half", weights=[0.5], base_model=str(tiny_model_dir))
    meta = json.loads((tmp_path / "half" / "tuner.json").read_text())
    assert meta["base_model"] == str(tiny_model_dir.resolve())
    assert [p.name for p in (tmp_path / "half").iterdir() if p.is_dir()] == []  # no a0/ (peft's other adapters)
    base = Path(shutil.copytree(tiny_model_dir, tmp_path / "base"))
    with pytest.raises(ValueError, match="would replace the base model"):
        merge_adapters([a], base, weights=[0.5], base_model=str(base), overwrite=True)
    assert sorted(p.name for p in base.iterdir()) == sorted(p.name for p in tiny_model_dir.iterdir())


def test_adapters_trained_on_other_prompt_contracts_are_refused(tiny_model_dir, tmp_path):
    """Two adapters trained with different prompt contracts (another template or yes/no tokens) score different
    prompts: their sum has no contract, and it is refused before the base loads."""
    a = _adapter(tiny_model_dir, tmp_path / "a", seed=1, contract={"template": "v1"})
    b = _adapter(tiny_model_dir, tmp_path / "b", seed=2, contract={"template": "v2"})
    with pytest.raises(ValueError, match="the adapters disagree on the prompt contract"):
        merge_adapters([a, b], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_written_adapter_whose_tensors_do_not_have_its_configs_rank_is_refused(tiny_model_dir, tmp_path, monkeypatch):
    """The last check before a merge is renamed into place reads the written tensors' ranks back from the
    safetensors header: one that disagrees with adapter_config.json's r (peft could not load it) is refused, and
    the merge is not written."""
    from peft import PeftModel
    from safetensors.torch import save_file

    from tuner.merge import _check_written

    a = _adapter(tiny_model_dir, tmp_path / "a", seed=1)
    save = PeftModel.save_pretrained

    def wrong_rank(self, folder, **kwargs):  # a config that says another rank than the tensors have
        save(self, folder, **kwargs)
        config = json.loads((Path(folder) / "adapter_config.json").read_text())
        (Path(folder) / "adapter_config.json").write_text(json.dumps({**config, "r": config["r"] + 1}))

    monkeypatch.setattr(PeftModel, "save_pretrained", wrong_rank)
    with pytest.raises(ValueError, match=r"has rank 4, its config r=5; nothing written"):
        merge_adapters([a], tmp_path / "half", weights=[0.5])
    assert not (tmp_path / "half").exists()
    monkeypatch.undo()

    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    name = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{name}.lora_A.weight": torch.zeros(4, 8), f"{name}.lora_B.weight": torch.zeros(8, 4)},
              str(tmp_path / "adapter_model.safetensors"))  # fmt: skip
    _check_written(tmp_path)
    save_file({f"{name}.lora_A.weight": torch.zeros(12, 8), f"{name}.lora_B.weight": torch.zeros(8, 12)},
              str(tmp_path / "adapter_model.safetensors"))  # fmt: skip
    with pytest.raises(ValueError, match=r"lora_A\.weight has rank 12, its config r=4; nothing written"):
        _check_written(tmp_path)


def test_an_infinite_weight_is_refused(tiny_model_dir, tmp_path):
    """`--weights inf` (argparse's float takes it) would make an adapter of infinite deltas: refused before
    anything loads, as nan is."""
    a = _adapter(tiny_model_dir, tmp_path / "a", seed=1)
    for weight in (float("inf"), float("-inf")):
        with pytest.raises(ValueError, match=r"--weights: -?inf is not a finite number"):
            merge_adapters([a], tmp_path / "out", weights=[weight])
    assert not (tmp_path / "out").exists()


def test_a_finite_weight_that_overflows_float32_is_refused(tiny_model_dir, tmp_path):
    """`--weights 1e308` is a finite float but not a float32: the merged adapter held inf and nan, passed the
    weighted-sum check (inf - inf is nan, never above the tolerance), was written, and scored NaN."""
    a = _adapter(tiny_model_dir, tmp_path / "a", seed=1)
    with pytest.raises(ValueError, match=r"^--weights 1e\+308: the merged adapter's weights are not finite in float32"):
        merge_adapters([a], tmp_path / "out", weights=[1e308])
    assert not (tmp_path / "out").exists()


def test_a_merge_records_its_sources_as_absolute_paths(tiny_model_dir, tmp_path, monkeypatch):
    """`tuner merge runs/a --out soup` records where its sources are, whatever folder a later `tuner eval` runs in
    (the seen / unseen split traces the merge's runs through these paths)."""
    _adapter(tiny_model_dir, tmp_path / "runs" / "a" / "adapter", seed=1)
    monkeypatch.chdir(tmp_path)
    record = merge_adapters(["runs/a"], "soup", weights=[0.5])
    assert record["sources"] == [str(tmp_path / "runs" / "a" / "adapter")]
    assert json.loads((tmp_path / "soup" / "tuner.json").read_text())["merge"]["sources"] == record["sources"]
