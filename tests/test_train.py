"""End-to-end training on the tiny model (CPU): it learns, only the adapter moves, the output is loadable."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import tiny_config, write_beir

from tuner.config import ConfigError
from tuner.scoring import ModelNotFoundError, Reranker
from tuner.train import train


@pytest.fixture(scope="module")
def beir(tmp_path_factory):
    return write_beir(tmp_path_factory.mktemp("beir") / "topics")


@pytest.fixture(scope="module")
def trained(tiny_model_dir, beir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = tiny_config(
        tiny_model_dir,
        beir,
        out,
        "train.max_steps=24",
        "eval.beir=" + str(beir),
        "eval.split=test",
        "eval.top_k=12",
        "eval.steps=12",
        "eval.before=true",
        "train.save_steps=12",
        "eval.ood=" + str(beir),
        "eval.ood_split=train",
    )
    return train(config)


def test_loss_falls_on_a_learnable_slice(trained):
    history = [r for r in _log_history(trained) if "loss" in r]
    first = sum(r["loss"] for r in history[:4]) / 4
    last = sum(r["loss"] for r in history[-4:]) / 4
    assert last < 0.7 * first, (first, last)


def test_the_training_log_shows_how_the_groups_rank(trained):
    """Each loss line carries pos_top1 / pos_margin; on a learnable slice both rise as the loss falls."""
    history = [r for r in _log_history(trained) if "loss" in r]
    assert all(0.0 <= r["pos_top1"] <= 1.0 for r in history)
    first, last = history[:6], history[-6:]
    assert sum(r["pos_top1"] for r in last) > sum(r["pos_top1"] for r in first)
    assert sum(r["pos_margin"] for r in last) / 6 > sum(r["pos_margin"] for r in first) / 6 + 0.5
    text = (trained["output_dir"] / "logs" / "train.log").read_text()
    assert "pos_top1=" in text
    # each training line ends with the progress, counted down to the last step
    progress = re.findall(r"step (\d+): loss=.* \| (\d+)/24 steps, ~(\S+) of training left", text)
    assert progress and all(a == b for a, b, _ in progress) and progress[-1][:2] == ("24", "24")
    assert progress[-1][2] == "0s"


def test_durations_read_at_a_glance():
    from tuner.trainer import duration

    assert [duration(s) for s in (0.4, 45, 185, 7620, -3)] == ["0s", "45s", "3m05s", "2h07m", "0s"]


def test_ranking_window_sums_over_steps_and_resets():
    from tuner.trainer import RankingWindow

    window = RankingWindow()
    assert window.summary() is None
    window.add(torch.tensor([[3.0, 1.0, 2.0]]))  # positive on top
    window.add(torch.tensor([[0.0, 1.0, -1.0], [1.0, 1.0, 0.0]]))  # below one negative; a tie is not on top
    every = torch.tensor([3.0, 1.0, 2.0, 0.0, 1.0, -1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    got = window.summary()
    assert got["pos_top1"] == pytest.approx(1 / 3, abs=1e-4)
    assert got["pos_margin"] == pytest.approx(4 / 3 - 4 / 6, abs=1e-4)
    assert got["logit_std"] == pytest.approx(every.std(unbiased=False).item())
    assert window.summary() is None  # reset: the next window starts empty
    window.add(torch.tensor([[5.0]]))  # a group without negatives ranks nothing
    assert window.summary() is None

    # DDP: `reduce` sums the ranks' windows, counts included: two ranks give what one window of both gives
    a, b = torch.tensor([[3.0, 1.0, 2.0], [0.0, 1.0, -1.0]]), torch.tensor([[4.0, 5.0, 6.0]])
    rank1, both = RankingWindow(), RankingWindow()
    rank1.add(b)
    both.add(a), both.add(b)
    other = torch.cat([rank1.sums, torch.tensor([rank1.groups], dtype=torch.float64)])
    window.add(a)
    assert window.summary(lambda t: t + other) == both.summary()


def test_a_short_group_is_filled_with_masked_placeholders_not_repeats(tiny_model_dir):
    """A triplet file's one negative in a group of 4: all its negatives once, then placeholder slots (an empty
    document) that the mask marks; the ranking window counts only real documents."""
    from tuner.contract import PromptEncoder, load_tokenizer
    from tuner.data.schema import Group
    from tuner.train_data import GroupCollator, sample_group
    from tuner.trainer import RankingWindow

    short = sample_group(Group(query="q", pos=["p"], neg=["n"], pos_scores=[2.0], neg_scores=[1.0]), 4, 1, 0, 0)
    assert short["docs"] == ["p", "n", "", ""] and short["mask"] == [True, True, False, False]
    assert short["teacher"] == [2.0, 1.0, 0.0, 0.0]
    full = sample_group(Group(query="q", pos=["p"], neg=["a", "b", "c", "d"]), 4, 1, 0, 0)
    assert full["mask"] is None and len(set(full["docs"])) == 4
    collate = GroupCollator(PromptEncoder(load_tokenizer(), max_length=128), pad_id=0)
    assert "group_mask" not in collate([full, full])
    assert collate([full, short])["group_mask"].tolist() == [[True] * 4, [True, True, False, False]]

    masked, real = RankingWindow(), RankingWindow()
    masked.add(torch.tensor([[3.0, 1.0, 9.0, 9.0]]), torch.tensor([[True, True, False, False]]))
    real.add(torch.tensor([[3.0, 1.0]]))
    assert masked.summary() == real.summary()


@pytest.mark.parametrize("kind", ["listwise", "sft"])
def test_a_triplet_file_trains_with_masked_short_groups(kind, tiny_model_dir, beir, tmp_path):
    rows = [{"anchor": f"what about {w}?", "positive": f"{w} facts", "negative": f"not {w}"} for w in "abcdefgh"]
    file = tmp_path / "triplets.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    overrides = (f"data.train_file={file}", f"loss.kind={kind}", "train.max_steps=2", "eval.beir=null")
    result = train(tiny_config(tiny_model_dir, beir, tmp_path / kind, *overrides))
    loss = result["metrics"]["train"]["train_loss"]
    assert loss == loss and 0 < loss < 50


def test_checkpoint_writing_is_paused_out_of_the_throughput_window(monkeypatch):
    import time

    from transformers import Trainer

    from tuner.trainer import RerankTrainer

    monkeypatch.setattr(Trainer, "_save_checkpoint", lambda self, *a, **k: time.sleep(0.05))
    trainer = object.__new__(RerankTrainer)  # (only the window's bookkeeping is under test)
    trainer._window_paused = 0.0
    trainer._save_checkpoint(None, None)
    assert trainer._window_paused >= 0.05


def test_collapsed_scores_are_warned_about_once(tiny_model_dir, beir, tmp_path, monkeypatch):
    from tuner.trainer import RankingWindow

    original = RankingWindow.add
    monkeypatch.setattr(RankingWindow, "add", lambda self, logits, *_: original(self, torch.full_like(logits, 2.5)))
    train(tiny_config(tiny_model_dir, beir, tmp_path / "run", "train.max_steps=3"))
    log = (tmp_path / "run" / "logs" / "train.log").read_text()  # the run's logger does not propagate to caplog
    assert log.count("scores collapsed") == 1
    assert "WARNING step 1: every training document got the same score (yes−no logit std 0" in log


def _log_history(result):
    state = sorted((result["output_dir"] / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return json.loads((state[-1] / "trainer_state.json").read_text())["log_history"]


def test_lora_moved_and_base_bit_identical(trained, tiny_model_dir):
    model = trained["model"]
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: every adapter moved
    base = load_file(tiny_model_dir / "model.safetensors")
    live = {n.replace("base_model.model.", "").replace(".base_layer", ""): p for n, p in model.named_parameters()}
    compared = 0
    for name, weight in base.items():
        assert torch.equal(live[name].detach().cpu(), weight), name
        compared += 1
    assert compared == len(base)


def test_output_layout_and_adapter_scores_like_the_live_model(trained, tiny_model_dir):
    out, adapter = trained["output_dir"], trained["adapter_dir"]
    assert (out / "config.yaml").is_file() and (out / "metrics.json").is_file() and (out / "logs/train.log").is_file()
    assert {"adapter_config.json", "adapter_model.safetensors", "tuner.json"} <= {p.name for p in adapter.iterdir()}
    assert not (out / ".adapter.partial").exists()  # the staging folder became adapter/
    assert any((adapter / f).is_file() for f in ("tokenizer.json", "vocab.json"))
    meta = json.loads((adapter / "tuner.json").read_text())
    assert set(meta) >= {
        "base_model",
        "instruction",
        "max_length",
        "yes_token_id",
        "no_token_id",
        "tuner_version",
        "contract",
        "recipe",
        "eval",
    }
    assert meta["base_model"] == str(tiny_model_dir.resolve()) and meta["recipe"] == "test-tiny"  # absolute
    assert (meta["yes_token_id"], meta["no_token_id"]) == (9693, 2152)
    assert meta["eval"]["final"]["ndcg@10"] == trained["metrics"]["dev"]["final"]["ndcg@10"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"first_stage", "base", "final", "history"} <= set(metrics["dev"])
    assert [h["step"] for h in metrics["dev"]["history"]] == [12, 24]
    assert {"first_stage", "base", "final"} <= set(metrics["ood"]) and metrics["ood"]["name"].endswith("/train")
    assert metrics["dev"]["best"]["checkpoint"].endswith(("checkpoint-12", "checkpoint-24"))
    # the test topics' documents are not the train topics': every dev query is unseen, and its part is the whole
    overlap = metrics["dev"]["training_overlap"]
    assert overlap["relevant_documents_in_training"] == 0 and overlap["parts"]["seen"] == {
        "queries": 0,
        "meaning": overlap["parts"]["seen"]["meaning"],
    }
    unseen = overlap["parts"]["unseen"]
    assert unseen["queries"] == 4
    for stage in ("first_stage", "base", "final"):
        assert unseen[stage] == pytest.approx(metrics["dev"][stage], abs=1e-12)
    # the run records the groups it trained on (what `tuner eval` on its adapter splits by) and the base per query
    from tuner.overlap import training_view

    view = training_view(out)
    assert view.groups == 6 and "as run" in view.source  # the 6 train topics
    base_per_query = json.loads((out / "logs" / "dev-base-per-query.json").read_text())
    assert sorted(base_per_query) == ["q6", "q7", "q8", "q9"]
    assert sum(v["ndcg@10"] for v in base_per_query.values()) / 4 == pytest.approx(metrics["dev"]["base"]["ndcg@10"])
    assert unseen["final_vs_base"]["delta"] == pytest.approx(
        metrics["dev"]["final"]["ndcg@10"] - metrics["dev"]["base"]["ndcg@10"], abs=1e-12
    )

    # every checkpoint carries the run's tuner.json: scored or exported on its own, it keeps max_length 96 (not the
    # contract's 8192), the base and the recipe
    checkpoints = sorted((out / "checkpoints").glob("checkpoint-*"))
    assert [c.name for c in checkpoints] == ["checkpoint-12", "checkpoint-24"]
    for checkpoint in checkpoints:
        saved = json.loads((checkpoint / "tuner.json").read_text())
        assert (saved["max_length"], saved["base_model"], saved["recipe"]) == (96, meta["base_model"], "test-tiny")
    assert Reranker.from_pretrained(checkpoints[0], device="cpu").encoder.max_length == 96

    loaded = Reranker.from_pretrained(adapter, device="cpu", dtype="float32", max_length=96)
    live = Reranker(trained["model"], loaded.tokenizer, max_length=96)
    docs = ["notes on cats and feline: whiskers", "lava and magma", "espresso beans"]
    assert loaded.score("what about cats feline?", docs, normalize=False) == pytest.approx(
        live.score("what about cats feline?", docs, normalize=False), abs=1e-4
    )


def test_resume_of_a_missing_run_directory_says_so_and_makes_no_folder(tiny_model_dir, beir, tmp_path):
    """A mistyped output.dir with --resume: the error names the missing run folder, and leaves no empty one."""
    out = tmp_path / "runs" / "quik"
    with pytest.raises(ConfigError, match=r"--resume: no run directory .*quik \(output\.dir\)"):
        train(tiny_config(tiny_model_dir, beir, out), resume=True)
    assert not out.exists()


def test_named_errors(tiny_model_dir, beir, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data\.train_file"):
        train(tiny_config(tiny_model_dir, beir, tmp_path / "a", "data.train_file=" + str(tmp_path / "missing.jsonl")))
    with pytest.raises(ModelNotFoundError, match="no/such/model"):
        train(
            tiny_config(tiny_model_dir, beir, tmp_path / "b", "model.name_or_path=" + str(tmp_path / "no/such/model"))
        )
    with pytest.raises(FileNotFoundError, match=r"eval\.beir"):
        train(tiny_config(tiny_model_dir, beir, tmp_path / "c", "eval.beir=" + str(tmp_path / "nobeir")))
    with pytest.raises(ConfigError, match="--resume"):
        train(tiny_config(tiny_model_dir, beir, tmp_path / "d"), resume=True)
    # a run that stopped after its log was opened says why at the end of that log (a bad row is found when the
    # data is read); one that stopped before (the files, folders and local base the recipe names, and --resume,
    # are checked first) has no log, and its error does not land in the previous run's
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "pos": ["a"], "neg": ["b"]}\n{"query": "q2", "pos": "a"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        train(tiny_config(tiny_model_dir, beir, tmp_path / "e", f"data.train_file={bad}"))
    log_e = (tmp_path / "e" / "logs" / "train.log").read_text()
    assert log_e.count("ERROR run failed") == 1 and "bad.jsonl:2" in log_e and "Traceback" in log_e
    assert "--resume" not in log_e
    for name in "abc":  # a run stopped by the first checks leaves no empty run directory
        assert not (tmp_path / name).exists(), name
    assert not (tmp_path / "d" / "logs").exists()


def test_cli_bad_key_exit_code(capsys, tmp_path):
    from tuner.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text("# tuner train r.yaml\ntrain:\n  lrate: 1\n")
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "r.yaml" in err and "train.lrate" in err
    # the recipe is checked before torch and transformers are imported (a typo costs a second, not a dozen)
    code = (
        "import sys; from tuner.cli import main; "
        f"rc = main(['train', {str(recipe)!r}]); print(rc, 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.split() == ["2", "False", "False"], res.stderr


def _write_scored_groups(path):
    from train_helpers import TOPICS

    rows = []
    for word, near, extra in TOPICS[:6]:
        negs = [f"{w} {n}: {e}" for w, n, e in TOPICS if w != word][:5]
        rows.append(
            {
                "query": f"what about {word}?",
                "pos": [f"{word} {near}: {extra}"],
                "neg": negs,
                "pos_scores": [3.0],
                "neg_scores": [-1.0, -2.0, 0.5, -0.5, -3.0],
                "instruction": "Find the topic",
            }
        )
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize("kind", ["pointwise", "distill", "sft"])
def test_each_loss_trains_from_a_train_file(kind, tiny_model_dir, beir, tmp_path):
    groups = _write_scored_groups(tmp_path / "groups.jsonl")
    result = train(
        tiny_config(
            tiny_model_dir,
            beir,
            tmp_path / kind,
            f"data.train_file={groups}",
            f"loss.kind={kind}",
            "loss.pos_weight=3",
            "loss.hard_label_weight=0.3",
            "train.max_steps=2",
        )
    )
    loss = result["metrics"]["train"]["train_loss"]
    assert loss == loss and 0 < loss < 50  # finite and positive
    assert any(p.abs().sum() > 0 for n, p in result["model"].named_parameters() if "lora_B" in n)


def test_a_max_length_past_the_models_positions_is_a_config_error(tiny_model_dir, beir, tmp_path):
    with pytest.raises(ConfigError, match=r"model\.max_length 40961 is past the model's max_position_embeddings"):
        train(tiny_config(tiny_model_dir, beir, tmp_path / "x", "model.max_length=40961"))


def test_a_max_length_that_leaves_no_room_for_the_body_names_the_recipe_key(tiny_model_dir, beir, tmp_path):
    with pytest.raises(ConfigError, match=r"^model\.max_length 20 leaves no room for the prompt body \(prefix "):
        train(tiny_config(tiny_model_dir, beir, tmp_path / "x", "model.max_length=20"))


def test_distill_without_teacher_scores_is_a_named_error(tiny_model_dir, beir, tmp_path):
    with pytest.raises(ConfigError, match="teacher scores"):
        train(tiny_config(tiny_model_dir, beir, tmp_path / "x", "loss.kind=distill"))


def test_full_finetuning_writes_a_loadable_model(tiny_model_dir, beir, tmp_path):
    """Full fine-tuning keeps fp32 weights whatever model.dtype says: in bf16 most AdamW updates (~lr) round away."""
    overrides = ("lora.enabled=false", "model.dtype=bfloat16", "train.max_steps=2", "train.lr=1e-3")
    result = train(tiny_config(tiny_model_dir, beir, tmp_path / "full", *overrides))
    log = (tmp_path / "full" / "logs" / "train.log").read_text()  # the run's logger does not propagate to caplog
    assert "the base is loaded in float32, not model.dtype=bfloat16" in log
    model_dir = result["adapter_dir"]
    assert model_dir.name == "model" and (model_dir / "config.json").is_file()
    assert json.loads((model_dir / "tuner.json").read_text())["base_model"] == str(tiny_model_dir)
    moved = load_file(next(model_dir.glob("*.safetensors")))
    base = load_file(tiny_model_dir / "model.safetensors")
    assert any(not torch.equal(moved[k], base[k]) for k in base if k in moved)
    assert {t.dtype for t in moved.values()} == {torch.float32}  # trained (and saved) in fp32
    reranker = Reranker.from_pretrained(model_dir, device="cpu", dtype="float32", max_length=96)
    assert len(reranker.score("q", ["a", "b"])) == 2


def test_log_and_cli_summary_show_the_out_of_domain_check(trained, monkeypatch, capsys):
    """The forgetting check is on the console, not only in metrics.json: base and final, dev and out of domain."""
    from tuner import config as config_module
    from tuner import train as train_module
    from tuner.cli import main

    log = (trained["output_dir"] / "logs/train.log").read_text()
    assert "out of domain " in log and "out of domain final ndcg@10=" in log
    monkeypatch.setattr(config_module, "load_config", lambda recipe, overrides: None)
    monkeypatch.setattr(train_module, "train", lambda config, resume=False: trained)
    assert main(["train", "recipe.yaml"]) == 0
    lines = capsys.readouterr().out.splitlines()
    ood = trained["metrics"]["ood"]
    assert lines[0].startswith("dev ndcg@10=") and "(base " in lines[0]
    assert lines[1] == "out of domain " + " ".join(
        f"{k}={v:.4f} (base {ood['base'][k]:.4f})" for k, v in ood["final"].items()
    )


def test_a_diverging_run_stops_at_its_first_non_finite_step(tiny_model_dir, beir, tmp_path, monkeypatch, capsys):
    """A NaN loss stops the run with one line naming the step, instead of training on and saving an adapter of
    NaNs that exits 0 (transformers' own loss log would even show the finite steps' mean)."""
    from tuner.cli import main
    from tuner.trainer import RerankTrainer, TrainingDiverged

    original = RerankTrainer.compute_loss

    def nan_from_step_3(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = original(self, model, inputs, return_outputs, num_items_in_batch)
        return loss * float("nan") if self.state.global_step >= 2 else loss

    monkeypatch.setattr(RerankTrainer, "compute_loss", nan_from_step_3)
    config = tiny_config(tiny_model_dir, beir, tmp_path / "run", "train.max_steps=5")
    with pytest.raises(TrainingDiverged, match=r"^step 3: loss=nan"):
        train(config)
    assert not (tmp_path / "run" / "adapter").exists()
    log = (tmp_path / "run" / "logs" / "train.log").read_text()
    assert "step 2: loss=" in log and "ERROR run failed: TrainingDiverged: step 3: loss=nan" in log
    # the CLI: one line and exit code 1, no traceback
    capsys.readouterr()
    config.save(tmp_path / "recipe.yaml")
    assert main(["train", str(tmp_path / "recipe.yaml"), f"output.dir={tmp_path / 'cli'}"]) == 1
    err = capsys.readouterr().err
    assert "tuner train: error: step 3: loss=nan" in err and "Traceback" not in err


def test_a_mistyped_target_module_beside_good_ones_is_named(tiny_model_dir):
    """peft refuses target_modules only when no name matches; [q_proj, v_prj] trained q_proj alone, silently."""
    from tuner.modeling import attach_lora, load_base

    base = load_base(tiny_model_dir, dtype="float32", device="cpu")
    with pytest.raises(
        ValueError, match=r"Target modules \['v_prj'\] not found in the base model \(its linear .*v_proj"
    ):
        attach_lora(base, r=4, target_modules=["q_proj", "v_prj"])
    model = attach_lora(base, r=4, target_modules=["q_proj", "self_attn.v_proj"])  # peft's suffix match is kept
    adapted = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert adapted == {"q_proj", "v_proj"}


def test_a_target_module_matching_only_the_end_of_a_name_is_named(tiny_model_dir):
    """peft matches a list entry against a module's full name or its last dotted parts, never a bare string end:
    `proj` (or `p_proj`) beside `q_proj` adapts nothing, so it is named, not taken as up_proj / q_proj."""
    from tuner.modeling import attach_lora, load_base

    base = load_base(tiny_model_dir, dtype="float32", device="cpu")
    for typo in ("proj", "p_proj"):
        with pytest.raises(ValueError, match=rf"Target modules \['{typo}'\] not found"):
            attach_lora(base, r=4, target_modules=["q_proj", typo])


def test_the_base_loads_for_training_without_a_kv_cache_and_lora_keeps_its_variant(tiny_model_dir):
    """`model.use_rslora` / `use_dora` reach peft (train.py passes them to attach_lora): dropped, a recipe asking for
    rank-stabilised scaling (alpha / sqrt(r)) or DoRA trained plain LoRA without a word. The training base has no KV
    cache (a cache in every training forward only costs memory)."""
    from tuner.modeling import attach_lora, load_base

    base = load_base(tiny_model_dir, dtype="float32", device="cpu")
    assert base.config.use_cache is False and base.training
    rslora = attach_lora(base, r=4, alpha=8, target_modules=["q_proj"], use_rslora=True)
    layer = next(m for m in rslora.modules() if hasattr(m, "lora_A"))
    assert layer.scaling["default"] == pytest.approx(8 / 4**0.5)  # plain LoRA: 8 / 4
    base = load_base(tiny_model_dir, dtype="float32", device="cpu")
    dora = attach_lora(base, r=4, alpha=8, target_modules=["q_proj"], use_dora=True)
    assert dora.peft_config["default"].use_dora
    assert any("lora_magnitude_vector" in name for name, _ in dora.named_parameters())


def test_training_groups_of_dev_queries_are_left_out_or_warned_about(tiny_model_dir, beir, tmp_path):
    """A dev query that is also a training query measures memory: left out by default (data.drop_dev_queries),
    kept with a warning when asked; a dev set of nothing but training queries leaves nothing to train on."""
    from tuner.train_setup import load_training_groups

    dev_on_train = (f"eval.beir={beir}", "eval.split=train", "eval.before=false")
    with pytest.raises(ConfigError, match=r"every training group's query is a dev query \(topics/train\)"):
        train(tiny_config(tiny_model_dir, beir, tmp_path / "all", "train.max_steps=1", *dev_on_train))
    kept = tiny_config(tiny_model_dir, beir, tmp_path / "kept", "train.max_steps=1", "data.drop_dev_queries=false",
                       *dev_on_train)  # fmt: skip
    train(kept)
    log = (tmp_path / "kept" / "logs" / "train.log").read_text()
    assert "WARNING 6 of 6 training groups have a query of topics/train (e.g. 'notes about" in log
    # one shared query: its group is left out, the other five train
    groups = load_training_groups(kept.data, kept.loss.kind, 0, tmp_path / "g")
    from tuner.train import _check_dev_is_not_trained_on

    class Dev:
        name, queries = "dev", {"x": "  " + groups[0].query.upper() + " "}  # spacing and case do not matter

    left = _check_dev_is_not_trained_on(groups, Dev, drop=True, main=True)
    assert [g.query for g in left] == [g.query for g in groups[1:]]


def test_groups_without_a_negative_are_left_out_with_a_warning(tiny_model_dir, beir, tmp_path, caplog):
    from tuner.train_setup import load_training_groups

    rows = [{"query": "q1", "pos": ["p"], "neg": ["n"]}, {"query": "q2", "pos": ["p"], "negs": ["n"]}]
    file = tmp_path / "train.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = tiny_config(tiny_model_dir, beir, tmp_path / "run", f"data.train_file={file}")
    with caplog.at_level("WARNING", logger="tuner.train"):
        groups = load_training_groups(config.data, config.loss.kind, 0, tmp_path / "run")
    assert [g.query for g in groups] == ["q1"]
    assert f"{file}: left out 1 of 2 groups without a negative" in caplog.text and "'neg'" in caplog.text
    assert "tuner mine --data FILE" in caplog.text  # the way to negatives for rows of positives alone
    # q1 has one negative for a group of 4 (a triplet file's usual shape): said, with the way out
    assert f"{file}: 1 of 1 groups have fewer negatives than their slots (data.group_size 4 minus" in caplog.text
    assert "lower data.group_size" in caplog.text


def test_a_list_of_training_files_trains_on_every_files_groups(tiny_model_dir, beir, tmp_path, monkeypatch):
    """data.train_file as a list: the groups of every file, each read in its own format, in the list's order
    (max_groups counted over them all); a positive of one file that another lists as a negative of the same query
    is left out as a negative; a missing file is named by its place in the list, before any work."""
    from tuner.train_setup import check_before_work, load_training_groups

    grouped = tmp_path / "a.jsonl"
    grouped.write_text(json.dumps({"query": "q1", "pos": ["p1"], "neg": ["n1", "n2"]}) + "\n", encoding="utf-8")
    pairs = tmp_path / "b.csv"
    pairs.write_text("query,document,label\nq2,p2,1\nq2,n3,0\nq1,n2,1\nq1,p3,0\n", encoding="utf-8")
    config = tiny_config(tiny_model_dir, beir, tmp_path / "run", f"data.train_file=[{grouped}, {pairs}]")
    groups = load_training_groups(config.data, config.loss.kind, 0, tmp_path / "run")
    # the CSV's q1 group lists q1's negative n2 as a positive: the first file's n2 is no negative any more
    assert [(g.query, g.pos, g.neg) for g in groups] == [("q1", ["p1"], ["n1"]), ("q2", ["p2"], ["n3"]),
                                                         ("q1", ["n2"], ["p3"])]  # fmt: skip
    config.data.max_groups = 2
    assert [g.query for g in load_training_groups(config.data, config.loss.kind, 0, tmp_path / "run")] == ["q1", "q2"]
    missing = tiny_config(tiny_model_dir, beir, tmp_path / "m", f"data.train_file=[{grouped}, {tmp_path}/gone.csv]")
    with pytest.raises(FileNotFoundError, match=r"^data.train_file\[1\]: .*gone.csv"):
        check_before_work(missing)
    assert not (tmp_path / "m").exists()
    # a file listed twice (here once as ./a.jsonl from its folder) would have each of its groups trained on twice
    monkeypatch.chdir(tmp_path)
    twice = tiny_config(tiny_model_dir, beir, tmp_path / "t", f"data.train_file=[{grouped}, {pairs}, ./a.jsonl]")
    with pytest.raises(ConfigError, match=r"^data.train_file\[2\]: ./a.jsonl is data.train_file\[0\] again"):
        check_before_work(twice)
    assert not (tmp_path / "t").exists()


def test_a_dev_set_the_base_already_ranks_perfectly_is_warned_about(tiny_model_dir, beir, tmp_path, monkeypatch):
    """A dev set whose primary metric the base already scores at 1 (easy random negatives) can show no gain, and
    the best checkpoint or early stopping would pick among equals: the run's log says so, once, at the base."""
    from tuner.train import _at_ceiling
    from tuner.train_setup import RankEval

    def perfect(self, model):
        self.base_per_query = {}
        return {metric: 1.0 for metric in self.evaluator.metrics}

    monkeypatch.setattr(RankEval, "base", perfect)
    evals = (f"eval.beir={beir}", "eval.split=test", "eval.top_k=6", "eval.before=true")
    result = train(tiny_config(tiny_model_dir, beir, tmp_path / "run", "train.max_steps=1", *evals))
    log = (result["output_dir"] / "logs" / "train.log").read_text()
    assert log.count("WARNING dev topics/test: the base already scores ndcg@10=1.0000, the most there is") == 1
    assert _at_ceiling("d", "ndcg@10", {"ndcg@10": 0.999}) is None and _at_ceiling("d", "ndcg@10", None) is None


def test_training_leaves_out_negatives_that_are_positives_and_repeated_documents(
    tiny_model_dir, beir, tmp_path, caplog
):
    """A user's file can list a document as a positive and a negative of one query (in one group or two): such a
    negative is left out, as evaluation counts the document as the positive, and so are repeats in a group."""
    from tuner.train_setup import load_training_groups

    rows = [
        {"query": "q1", "pos": ["p", "p"], "neg": ["n1", "n2", "n1"]},
        {"query": "q1", "pos": ["p2"], "neg": ["p"]},  # its only negative is q1's positive: the group has none left
        {"query": "q2", "pos": ["p"], "neg": ["n1", "n2", "n3"]},  # p is not q2's positive: it stays as it is
    ]
    file = tmp_path / "train.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = tiny_config(tiny_model_dir, beir, tmp_path / "run", f"data.train_file={file}", "data.group_size=3")
    with caplog.at_level("WARNING", logger="tuner.train"):
        groups = load_training_groups(config.data, config.loss.kind, 0, tmp_path / "run")
    assert [(g.query, g.pos, g.neg) for g in groups] == [("q1", ["p"], ["n1", "n2"]), ("q2", ["p"], ["n1", "n2", "n3"])]
    assert (
        f"{file}: left out 1 negative that is also a positive of its query (query 'q1': 'p') and 2 repeats of a "
        "document within its group, in 2 groups" in caplog.text
    )
    assert f"{file}: left out 1 of 3 groups without a negative" in caplog.text  # what the conflict left empty


def test_repeated_documents_alone_are_not_called_a_conflict(tiny_model_dir, beir, tmp_path, caplog):
    """A group that lists a negative twice (pairs files do, one row per pair) keeps it once: the warning says that,
    not that "a loss cannot teach a document both ways" (that is for a negative that is also a positive)."""
    from tuner.train_setup import load_training_groups

    file = tmp_path / "train.jsonl"
    file.write_text(json.dumps({"query": "q1", "pos": ["p"], "neg": ["n1", "n2", "n1"]}) + "\n", encoding="utf-8")
    config = tiny_config(tiny_model_dir, beir, tmp_path / "run", f"data.train_file={file}", "data.group_size=3")
    with caplog.at_level("WARNING", logger="tuner.train"):
        groups = load_training_groups(config.data, config.loss.kind, 0, tmp_path / "run")
    assert [(g.pos, g.neg) for g in groups] == [(["p"], ["n1", "n2"])]
    assert f"{file}: left out 1 repeat of a document within its group, in 1 group: a repeated document is kept" in (
        caplog.text
    )
    assert "both ways" not in caplog.text and "lists them" not in caplog.text


def test_a_labeled_dev_file_is_the_dev_set(tiny_model_dir, beir, tmp_path, monkeypatch):
    """eval.data: the groups of a training-format file are evaluated before and after training (next to their
    random order), and a training group with a dev query is left out as with eval.beir."""
    from train_helpers import TOPICS

    rows = []
    for t, (word, near, _) in enumerate(TOPICS[5:], 5):  # topic 5 is also a training query
        docs = [f"notes on {w} and {n}" for w, n, _ in TOPICS]
        rows.append({"query": f"notes about {word} {near}?", "pos": [docs[t]], "neg": docs[:t] + docs[t + 1 :]})
    dev = tmp_path / "dev.jsonl"
    dev.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    config = tiny_config(
        tiny_model_dir, beir, tmp_path / "run", "train.max_steps=4", f"eval.data={dev}", "eval.before=true"
    )
    result = train(config)
    record = json.loads((result["output_dir"] / "metrics.json").read_text())["dev"]
    assert record["name"] == "dev.jsonl" and set(record) >= {"first_stage", "base", "final"}
    assert record["final"]["ndcg@10"] != record["first_stage"]["ndcg@10"]
    log = (result["output_dir"] / "logs" / "train.log").read_text()
    assert "left out 1 of 6 training groups whose query is a dev.jsonl query" in log
    assert "dev dev.jsonl: random order " in log
    assert "the most there is" not in log
    # the record `tuner eval` splits queries by counts the groups the data had, then those left out (it said
    # "5 groups less 1": the count after the drop)
    from tuner.overlap import TRAINING_VIEW

    view = json.loads(gzip.decompress((result["output_dir"] / TRAINING_VIEW).read_bytes()))
    assert view["groups"] == 5 and view["source"].endswith(
        ", 6 groups less 1 of queries the run evaluated on (its dev set)"
    )

    with pytest.raises(ConfigError, match=r"eval\.data: the dev set is eval\.beir or eval\.data, not both"):
        tiny_config(tiny_model_dir, beir, tmp_path / "x", f"eval.data={dev}", f"eval.beir={beir}")
    with pytest.raises(ConfigError, match=r"eval\.data: .*dve\.jsonl: no such file; did you mean .*dev\.jsonl"):
        train(tiny_config(tiny_model_dir, beir, tmp_path / "y", f"eval.data={tmp_path / 'dve.jsonl'}"))
    # a malformed dev file is found before the model loads (minutes on the 4B base), not after
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": 1, "pos": ["a"], "neg": ["b"]}\n', encoding="utf-8")

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the dev file was read")

    monkeypatch.setattr("tuner.modeling.load_base", never)
    with pytest.raises(ConfigError, match=r"eval\.data: .*bad\.jsonl:1: field 'query' must be a string"):
        train(tiny_config(tiny_model_dir, beir, tmp_path / "z", f"eval.data={bad}"))


def test_the_log_says_what_it_scores_before_each_evaluation(tiny_model_dir, beir, tmp_path):
    """Each evaluation (minutes of silence on a real dev set) is announced in the log before it starts: the base
    before training, the model at its last step, the out-of-domain set at the end."""
    out = tmp_path / "run"
    evals = ("eval.split=test", "eval.top_k=6", "eval.before=true", "eval.ood_split=train", "train.max_steps=1")
    train(tiny_config(tiny_model_dir, beir, out, f"eval.beir={beir}", f"eval.ood={beir}", *evals))
    lines = (out / "logs" / "train.log").read_text().splitlines()

    def first(pattern: str) -> int:
        return next(i for i, line in enumerate(lines) if re.search(pattern, line))

    pairs = r"\d+ queries, \d+ pairs \.\.\.$"
    assert first(rf"scoring the base \(adapter off\) on \S+/test: {pairs}") < first(r"INFO dev \S+/test: first stage")
    assert first(rf"scoring the base \(adapter off\) on \S+/train: {pairs}") < first(r"INFO out of domain \S+: first")
    assert first(rf"scoring the model at step 1 on \S+/test: {pairs}") < first(r"INFO dev final ")
    assert first(rf"scoring the trained model on \S+/train: {pairs}") < first(r"INFO out of domain final ")


def test_runs_of_one_base_share_its_evaluations_through_the_base_cache(tiny_model_dir, beir, tmp_path, monkeypatch):
    """eval.base_cache_dir (a sweep): the first run measures the base on the dev and out-of-domain sets, a later
    run with other training settings reads the same figures back without measuring (what makes an entry miss:
    the next test)."""
    from tuner.train_setup import RankEval

    cache = tmp_path / "cache"
    shared = (
        *("eval.beir=" + str(beir), "eval.split=test", "eval.top_k=6", "eval.before=true", "train.max_steps=1"),
        *("eval.ood=" + str(beir), "eval.ood_split=train", f"eval.base_cache_dir={cache}"),
    )
    first = train(tiny_config(tiny_model_dir, beir, tmp_path / "a", *shared))
    assert len(list(cache.glob("base-*.json"))) == 2  # dev and out of domain

    measured = []
    real_base = RankEval.base
    monkeypatch.setattr(
        RankEval, "base", lambda self, model: measured.append(self.evaluator.name) or real_base(self, model)
    )
    second = train(tiny_config(tiny_model_dir, beir, tmp_path / "b", *shared, "train.lr=1e-3", "lora.r=4"))
    assert measured == []
    for part in ("dev", "ood"):
        assert second["metrics"][part]["base"] == first["metrics"][part]["base"], part
    log = (tmp_path / "b" / "logs" / "train.log").read_text()
    assert f"dev base metrics as {tmp_path / 'a'} measured them (eval.base_cache_dir)" in log
    # the per-query base figures came along: the seen / unseen split at the end has its paired test
    assert json.loads((tmp_path / "b" / "logs" / "dev-base-per-query.json").read_text()) == json.loads(
        (tmp_path / "a" / "logs" / "dev-base-per-query.json").read_text()
    )


def test_a_base_cache_entry_is_read_back_only_for_the_same_base_inputs_and_set(tiny_model_dir, tmp_path):
    from types import SimpleNamespace

    from tuner.base_cache import BaseCache

    def evaluator(**changes):
        fields = dict(name="dev", qids=["q1"], queries={"q1": "a query"}, instruction=None, query_instructions={},
                      qrels={"q1": {"d1": 1}}, candidates={"q1": ["d1", "d2"]}, corpus={"d1": "one", "d2": "two"},
                      metrics=("ndcg@10",))  # fmt: skip
        return SimpleNamespace(**{**fields, **changes})

    inputs = {"eval": {"top_k": 6}, "seed": 0}
    cache = BaseCache(tmp_path / "c", str(tiny_model_dir), inputs)
    cache.put(evaluator(), {"ndcg@10": 0.5}, {"q1": {"ndcg@10": 0.5}}, written_by="run-a")
    entry = BaseCache(tmp_path / "c", str(tiny_model_dir), inputs).get(evaluator())
    assert entry["metrics"] == {"ndcg@10": 0.5} and entry["per_query"] == {"q1": {"ndcg@10": 0.5}}
    assert BaseCache(tmp_path / "c", str(tiny_model_dir), {**inputs, "seed": 1}).get(evaluator()) is None
    assert cache.get(evaluator(corpus={"d1": "one", "d2": "two, edited"})) is None  # a candidate's text
    assert cache.get(evaluator(qrels={"q1": {"d2": 1}})) is None
    assert cache.get(evaluator(candidates={"q1": ["d2", "d1"]})) is None  # the first stage's order
    other = tmp_path / "other-base"
    shutil.copytree(tiny_model_dir, other)
    assert BaseCache(tmp_path / "c", str(other), inputs).get(evaluator()) is None  # another folder
    (next(tmp_path.glob("c/base-*.json"))).write_text("{not json")
    assert cache.get(evaluator()) is None  # unreadable: measured again


def test_the_base_identity_changes_with_its_weights_config_or_tokenizer_files(tiny_model_dir, tmp_path):
    from tuner.base_cache import model_identity

    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    (base / "tokenizer_config.json").write_text('{"model_max_length": 8}')
    first = model_identity(str(base))
    assert first is not None and first == model_identity(str(base))
    (base / "tokenizer_config.json").write_text('{"model_max_length": 9}')  # another chat template or special tokens
    second = model_identity(str(base))
    assert second != first
    weights = next(base.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes() + b" ")  # retrained in place: another size
    assert model_identity(str(base)) != second
    assert model_identity(str(tmp_path / "no-such-hub-id")) is None  # no local snapshot: nothing to key it on


def test_the_collator_prompts_carry_each_groups_instruction_or_the_recipes():
    """A group's own instruction is the one its prompts are built with; a group without one gets the recipe's
    `data.instruction` (the one export and serve use), not the model card's default."""
    from tuner.contract import PromptEncoder, load_tokenizer
    from tuner.head import collate
    from tuner.train_data import GroupCollator

    encoder = PromptEncoder(load_tokenizer(), max_length=128)
    samples = [
        {"query": "q1", "instruction": "Find the topic", "docs": ["a", "b"], "labels": [1.0, 0.0], "teacher": None},
        {"query": "q2", "instruction": None, "docs": ["c", "d"], "labels": [1.0, 0.0], "teacher": None},
    ]
    batch = GroupCollator(encoder, pad_id=0, default_instruction="Judge the recipe's way")(samples)
    want = collate(
        [
            encoder.encode("q1", "a", "Find the topic"),
            encoder.encode("q1", "b", "Find the topic"),
            encoder.encode("q2", "c", "Judge the recipe's way"),
            encoder.encode("q2", "d", "Judge the recipe's way"),
        ],
        0,
    )
    assert torch.equal(batch["input_ids"], want["input_ids"])


def test_a_non_finite_gradient_norm_stops_the_run_even_with_a_finite_loss():
    """fp16 overflow shows as an infinite grad_norm beside a finite loss: the step is named, not trained past."""
    from types import SimpleNamespace

    from tuner.trainer import StopOnNonFinite, TrainingDiverged

    stop, state = StopOnNonFinite(), SimpleNamespace(global_step=7)
    stop.on_log(None, state, None, logs={"loss": 0.5, "grad_norm": 1.25, "learning_rate": 1e-4})
    stop.on_log(None, state, None, logs={"eval_ndcg@10": float("nan")})  # not a training figure: not judged here
    with pytest.raises(TrainingDiverged, match=r"^step 7: grad_norm=inf"):
        stop.on_log(None, state, None, logs={"loss": 0.5, "grad_norm": float("inf")})


def test_the_base_identity_changes_with_its_config_a_same_size_rewrite_and_its_hub_commit(
    tiny_model_dir, tmp_path, monkeypatch
):
    """A base edited in place keeps its folder: another config.json, or weights rewritten at the same size (a
    retrained model of one shape), is another base; a hub id is its cached snapshot's commit."""
    import os

    from tuner.base_cache import model_identity

    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    first = model_identity(str(base))
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "rope_theta": 12345.0}))
    second = model_identity(str(base))
    assert second != first
    weights = next(base.glob("*.safetensors"))
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # rewritten: same size, newer
    assert model_identity(str(base)) != second

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--org--tiny"
    for commit in ("a" * 40, "b" * 40):
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    old = model_identity("org/tiny")
    (repo / "refs" / "main").write_text("b" * 40)  # the hub model was updated and downloaded again
    assert old == {"hub_id": "org/tiny", "commit": "a" * 40} and model_identity("org/tiny") != old


def test_a_base_cache_entry_is_keyed_by_the_sets_queries_instructions_metrics_and_the_environment(
    tiny_model_dir, tmp_path, monkeypatch
):
    """What the previous test does not change: a query's text, the set's or a query's instruction (a dev file's
    per-row instruction edited), the metrics, and the library versions or device all make an entry miss."""
    from types import SimpleNamespace

    from tuner import base_cache
    from tuner.base_cache import BaseCache

    def evaluator(**changes):
        fields = dict(name="dev", qids=["q1"], queries={"q1": "a query"}, instruction=None, query_instructions={},
                      qrels={"q1": {"d1": 1}}, candidates={"q1": ["d1", "d2"]}, corpus={"d1": "one", "d2": "two"},
                      metrics=("ndcg@10",))  # fmt: skip
        return SimpleNamespace(**{**fields, **changes})

    cache = BaseCache(tmp_path / "c", str(tiny_model_dir), {"seed": 0})
    cache.put(evaluator(), {"ndcg@10": 0.5}, {"q1": {"ndcg@10": 0.5}}, written_by="run-a")
    assert cache.get(evaluator()) is not None
    assert cache.get(evaluator(queries={"q1": "a query, edited"})) is None
    assert cache.get(evaluator(instruction="Judge it")) is None
    assert cache.get(evaluator(query_instructions={"q1": "Judge it"})) is None
    assert cache.get(evaluator(metrics=("ndcg@10", "recall@100"))) is None
    environment = base_cache._environment()
    monkeypatch.setattr(base_cache, "_environment", lambda: {**environment, "device": "NVIDIA H100"})
    assert BaseCache(tmp_path / "c", str(tiny_model_dir), {"seed": 0}).get(evaluator()) is None


def test_the_recipes_mining_fields_and_max_groups_are_applied(tiny_model_dir, beir, tmp_path):
    """data.num_negatives, mine_depth, mine_range_min, max_groups and the run's seed shape the mined groups."""
    from tuner.train_setup import load_training_groups

    def groups(name, *overrides, seed=0):
        config = tiny_config(tiny_model_dir, beir, tmp_path / name, *overrides)
        return load_training_groups(config.data, config.loss.kind, seed, tmp_path / name)

    three = groups("three", "data.num_negatives=3", "data.max_groups=4")
    assert len(three) == 4 and all(len(g.neg) == 3 for g in three)
    assert len(groups("all", "data.num_negatives=3")) == 6  # the 6 train topics
    # BM25 ranks 2..5 only: at most 4 negatives (fewer where a positive ranks there), whatever num_negatives says
    shallow = groups("shallow", "data.mine_depth=6", "data.mine_range_min=2")
    assert all(3 <= len(g.neg) <= 4 for g in shallow)
    # the seed draws the negatives from the range (each seed its own, the same seed the same)
    drawn = {seed: [g.neg for g in groups(f"seed{seed}", "data.num_negatives=3", seed=seed)] for seed in (0, 1)}
    assert drawn[0] != drawn[1] and drawn[0] == [g.neg for g in groups("again", "data.num_negatives=3", seed=0)]


def test_the_dev_evaluators_follow_the_recipes_eval_fields(beir, tmp_path):
    """eval.top_k, eval.max_queries (a choice seeded by train.seed) and eval.metrics make the dev set: a recipe's
    top_k 3 is not evaluated on the BM25 top 100, nor 2 queries on all of them."""
    from tuner.config import load_config
    from tuner.evaluate import sample_queries
    from tuner.train_setup import build_evaluators

    fields = [f"eval.beir={beir}", "eval.split=test", "eval.top_k=3", "eval.max_queries=2"]
    fields.append("eval.metrics=[mrr@10,ndcg@5]")
    for seed in (0, 5):
        dev = build_evaluators(load_config(None, fields).eval, seed, tmp_path / "cache")["dev"]
        assert dev.top_k == 3 and all(len(docs) == 3 for docs in dev.candidates.values())
        assert dev.qids == sample_queries(["q6", "q7", "q8", "q9"], 2, seed)
        assert (dev.metrics, dev.primary_metric) == (("mrr@10", "ndcg@5"), "mrr@10")


def test_the_dev_evaluation_scores_with_the_recipes_instruction(evaluator, tiny_reranker):
    """RankEval reranks the dev set with data.instruction, the one the model trains and is served with."""
    from tuner.scoring import Reranker
    from tuner.train_setup import RankEval

    model, tokenizer = tiny_reranker.model, tiny_reranker.tokenizer
    got = RankEval(evaluator, tokenizer, 96, None, "Find the topic")(model)
    want = evaluator.evaluate(Reranker(model, tokenizer, max_length=96, instruction="Find the topic"))
    default = evaluator.evaluate(Reranker(model, tokenizer, max_length=96))
    assert got == want.metrics and want.per_query != default.per_query  # (the instruction moves this set's ranks)


def test_the_recipe_reaches_the_trainer_and_the_runs_tuner_json(tiny_model_dir, beir, tmp_path, monkeypatch):
    """Each recipe field is handed to the piece that applies it: the optimizer and schedule (TrainingArguments), the
    sampler, the collator's instruction, the loss options, the dev evaluation; and the adapter's and checkpoints'
    tuner.json record the instruction and max_length that export and serve then use."""
    from tuner.trainer import RerankTrainer

    built = []
    original = RerankTrainer.__init__
    monkeypatch.setattr(RerankTrainer, "__init__", lambda self, *a, **k: built.append(self) or original(self, *a, **k))
    recipe = (
        *("train.seed=7", "train.lr=3e-3", "train.weight_decay=0.01", "train.scheduler=cosine", "train.warmup=1"),
        *("train.max_grad_norm=0.5", "train.grad_accum=2", "train.batch_groups=1", "train.max_steps=1"),
        *("data.group_size=3", "data.positives_per_group=2", "data.instruction=Find the topic", "model.max_length=80"),
        *("loss.temperature=0.5", "loss.teacher_temperature=2.0", "loss.hard_label_weight=0.25", "loss.pos_weight=3"),
        *(f"eval.beir={beir}", "eval.split=test", "eval.top_k=3", "eval.before=false"),
    )
    result = train(tiny_config(tiny_model_dir, beir, tmp_path / "run", *recipe))
    (trainer,) = built
    args = {k: getattr(trainer.args, k) for k in ("seed", "data_seed", "learning_rate", "weight_decay", "warmup_steps")}
    assert args == {"seed": 7, "data_seed": 7, "learning_rate": 3e-3, "weight_decay": 0.01, "warmup_steps": 1}
    args = {
        k: getattr(trainer.args, k)
        for k in ("max_grad_norm", "gradient_accumulation_steps", "per_device_train_batch_size")
    }
    assert args == {"max_grad_norm": 0.5, "gradient_accumulation_steps": 2, "per_device_train_batch_size": 1}
    assert trainer.args.lr_scheduler_type.value == "cosine"
    data = trainer.train_dataset
    assert (data.group_size, data.seed, data.positives) == (3, 7, 2) and trainer.epoch_sampler.seed == 7
    assert trainer.data_collator.default_instruction == "Find the topic"
    assert trainer.data_collator.encoder.max_length == 80
    loss = {"pos_weight": 3.0, "temperature": 0.5, "teacher_temperature": 2.0, "hard_label_weight": 0.25}
    assert trainer.loss_kwargs == loss
    assert trainer.rank_eval.kwargs["instruction"] == "Find the topic" and trainer.rank_eval.kwargs["max_length"] == 80
    for folder in (result["adapter_dir"], tmp_path / "run" / "checkpoints" / "checkpoint-1"):
        meta = json.loads((folder / "tuner.json").read_text())
        assert (meta["instruction"], meta["max_length"]) == ("Find the topic", 80), folder


def test_the_base_evaluations_key_holds_what_the_base_figures_depend_on():
    """A base measured with one instruction (or seed, precision, max_length, top_k) is not read back for another: a
    sweep over data.instruction through eval.base_cache_dir would report the first instruction's base for all."""
    from tuner.config import load_config
    from tuner.train import _eval_inputs

    plain = _eval_inputs(load_config(None, []))
    for override in ("data.instruction=Find the topic", "train.seed=7", "train.precision=fp32", "model.max_length=512",
                     "eval.top_k=10"):  # fmt: skip
        assert _eval_inputs(load_config(None, [override])) != plain, override
    # where the figures are kept, and what trains after them, are not part of it
    for override in ("eval.base_cache_dir=/tmp/elsewhere", "train.lr=1e-3", "lora.r=4", "data.group_size=4"):
        assert _eval_inputs(load_config(None, [override])) == plain, override


@pytest.mark.skipif(torch.cuda.is_available(), reason="the warnings of a CPU run")
def test_a_cpu_run_says_its_base_keeps_model_dtype_in_its_log(tiny_model_dir, beir, tmp_path):
    """On CPU, train.precision=bf16 falls back to fp32 steps but a LoRA base stays in model.dtype: the log says so
    (it said "training in fp32"), in logs/train.log too (it was printed before logging was set up)."""
    overrides = ("train.max_steps=1", "model.dtype=bfloat16", "train.precision=bf16")
    train(tiny_config(tiny_model_dir, beir, tmp_path / "run", *overrides))
    log = (tmp_path / "run" / "logs" / "train.log").read_text()
    assert "train.precision=bf16 without CUDA: no mixed precision on CPU (as fp32)" in log
    assert "model.dtype=bfloat16 without CUDA: the frozen base computes in bfloat16 on CPU" in log
    assert "training in fp32" not in log
    train(tiny_config(tiny_model_dir, beir, tmp_path / "fp32", "train.max_steps=1"))  # model.dtype=float32
    assert "without CUDA" not in (tmp_path / "fp32" / "logs" / "train.log").read_text()


def test_a_second_round_starts_from_the_first_rounds_adapter(trained, tiny_model_dir, beir, tmp_path):
    """lora.init_adapter: round two loads round one's adapter (a run folder stands for its adapter/) with its own
    settings, trains on from those weights (not new ones) on other data, and its run counts both rounds' queries as
    seen in training; the adapter it writes loads on the base alone and names where it started."""
    from peft.utils import get_peft_model_state_dict

    from tuner.overlap import text_key, training_view
    from tuner.train import _load_model

    first = load_file(trained["adapter_dir"] / "adapter_model.safetensors")
    rows = tmp_path / "round2.jsonl"
    rows.write_text(json.dumps({"query": "a new question", "pos": ["answer"], "neg": ["x", "y", "z"]}) + "\n")
    overrides = [f"lora.init_adapter={trained['output_dir']}", f"data.train_file={rows}", "train.max_steps=2"]
    config = tiny_config(tiny_model_dir, beir, tmp_path / "two", *overrides, "lora.r=4", "lora.target_modules=[q_proj]")
    model = _load_model(config, str(tiny_model_dir), "cpu")
    start = get_peft_model_state_dict(model)
    assert set(start) == set(first) and all(torch.equal(start[k], first[k]) for k in first)
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)
    assert any(p.requires_grad for p in model.parameters())
    result = train(config)
    log = (tmp_path / "two" / "logs" / "train.log").read_text()
    said = "the adapter's own settings are trained, not lora.r=4 (the adapter has 8), lora.target_modules=['q_proj']"
    assert (
        f"{said} (the adapter has ['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj'])" in log
    )
    # round one's adapter on a base of another shape: one line naming the key, not torch's list of tensors
    from tuner.tiny import write_tiny_model

    other = write_tiny_model(tmp_path / "other", layers=2, hidden=32, seed=0)
    with pytest.raises(ConfigError, match=r"^lora.init_adapter: adapter .* does not fit base .*other"):
        _load_model(config, str(other), "cpu")
    second = load_file(result["adapter_dir"] / "adapter_model.safetensors")
    assert set(second) == set(first) and any(not torch.equal(second[k], first[k]) for k in first)
    meta = json.loads((result["adapter_dir"] / "tuner.json").read_text())
    assert meta["init_adapter"] == str(trained["output_dir"])
    Reranker.from_pretrained(result["adapter_dir"], device="cpu", dtype="float32").score("q", ["d"])
    seen = training_view(tmp_path / "two").queries
    assert text_key("a new question") in seen and training_view(trained["output_dir"]).queries <= seen


def test_a_start_adapter_that_cannot_be_used_is_refused_before_any_work(tiny_model_dir, beir, tmp_path):
    from tuner.train_setup import check_before_work

    with pytest.raises(ConfigError, match=r"lora.init_adapter: .*needs lora.enabled=true"):
        tiny_config(tiny_model_dir, beir, tmp_path / "r", "lora.init_adapter=runs/a", "lora.enabled=false")
    (tmp_path / "model").mkdir()  # a full fine-tuning run's weights: no adapter
    for where in (tmp_path / "gone", tmp_path / "model"):
        config = tiny_config(tiny_model_dir, beir, tmp_path / "r", f"lora.init_adapter={where}")
        with pytest.raises(FileNotFoundError, match=rf"^lora.init_adapter: '{where}' is no LoRA adapter"):
            check_before_work(config)
    assert not (tmp_path / "r").exists()


def test_a_start_adapter_inside_the_runs_own_folder_is_refused_before_it_is_deleted(tiny_model_dir, beir, tmp_path):
    """lora.init_adapter naming this run's own folder (or its adapter/, or one of its checkpoints) with
    output.overwrite: the run would delete that adapter before loading it; refused before any work, kept."""
    from tuner.train_setup import check_before_work

    run = tmp_path / "r"
    for folder in (run / "adapter", run / "checkpoints" / "checkpoint-2"):
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text('{"peft_type": "LORA"}', encoding="utf-8")
    (run / "config.yaml").write_text("name: r\n", encoding="utf-8")
    for where in (run, run / "adapter", run / "checkpoints" / "checkpoint-2"):
        config = tiny_config(tiny_model_dir, beir, run, f"lora.init_adapter={where}", "output.overwrite=true")
        with pytest.raises(ConfigError, match=r"^lora.init_adapter: .* is in this run's own folder"):
            check_before_work(config)
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert (run / "checkpoints" / "checkpoint-2" / "adapter_config.json").is_file()
    # another run's adapter is fine
    config = tiny_config(tiny_model_dir, beir, tmp_path / "two", f"lora.init_adapter={run}", "output.overwrite=true")
    check_before_work(config)
