"""Recipe config: typed fields, dotted overrides, named errors, every shipped recipe loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuner.config import Config, ConfigError, describe_fields, load_config

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))


def test_defaults_and_overrides():
    cfg = load_config(None, ["train.lr=1e-4", "lora.r=8", "lora.target_modules=[q_proj, v_proj]", "eval.ood=null"])
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)
    assert cfg.lora.r == 8
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.eval.ood is None
    assert Config().lora.target_modules == "all-linear"


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  lr: 5e-4\n")  # YAML 1.1 reads this as a string
    assert load_config(recipe).train.lr == pytest.approx(5e-4)


def test_unknown_key_names_key_and_file(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("train:\n  learning_rate: 1e-4\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*train\.learning_rate"):
        load_config(recipe)
    with pytest.raises(ConfigError, match=r"unknown key 'nosection'"):
        load_config(None, ["nosection.x=1"])


def test_wrong_type_and_bad_choice_are_named(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("lora:\n  r: sixteen\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*lora\.r.*expected int"):
        load_config(recipe)
    with pytest.raises(ConfigError, match=r"loss\.kind.*not one of"):
        load_config(None, ["loss.kind=hinge"])
    with pytest.raises(ConfigError, match=r"model\.tiny"):
        load_config(None, ["model.tiny=3"])
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="group_size"):
        load_config(None, ["data.group_size=1", "loss.kind=listwise"])
    with pytest.raises(ConfigError, match="load_in_4bit"):
        load_config(None, ["model.load_in_4bit=true", "lora.enabled=false"])


def test_every_field_has_a_doc():
    rows = describe_fields()
    assert len(rows) > 50
    assert all(doc for _, _, _, doc in rows), [key for key, _, _, doc in rows if not doc]
    keys = {key for key, *_ in rows}
    assert {"train.lr", "lora.use_dora", "model.load_in_4bit", "tracking.report_to", "eval.steps"} <= keys


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_recipes_load_and_open_with_their_command(recipe):
    cfg = load_config(recipe)
    first = recipe.read_text().splitlines()[0]
    assert first.startswith("# ") and f"tuner train recipes/{recipe.name}" in first
    assert cfg.name == recipe.stem
    assert cfg.eval.beir is None or cfg.data.beir != cfg.eval.beir or cfg.data.split != cfg.eval.split


def test_recipes_shipped():
    assert {p.name for p in RECIPES} >= {
        "qwen3-reranker-4b-lora.yaml",
        "qwen3-reranker-4b-qlora.yaml",
        "qwen3-reranker-4b-distill.yaml",
        "tiny-cpu.yaml",
    }


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.lr=3e-4", "name=x"])
    cfg.save(tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again.to_dict() == cfg.to_dict()


def test_cli_lists_fields(capsys):
    from tuner.cli import main

    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "train.lr" in out and "peak learning rate" in out
    assert main(["config", "train.nope=1"]) == 2
    assert "train.nope" in capsys.readouterr().err
