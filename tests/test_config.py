"""Recipe config: typed fields, dotted overrides, named errors, every shipped recipe loads."""

from __future__ import annotations

import re
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
    for kind in ("pointwise", "sft"):  # positives alone teach "yes" for everything, with no ranking figure to show it
        with pytest.raises(ConfigError, match=r"data.group_size: must be >= 2 \(a positive and at least one neg"):
            load_config(None, ["data.group_size=1", f"loss.kind={kind}"])
    with pytest.raises(ConfigError, match="load_in_4bit"):
        load_config(None, ["model.load_in_4bit=true", "lora.enabled=false"])
    # an artifact needs a wandb run to be logged to: without one the weights would silently not be uploaded
    for tracker in ("none", "tensorboard"):
        with pytest.raises(
            ConfigError, match=rf"tracking.log_model: .*set tracking.report_to: wandb \(got '{tracker}'\)"
        ):
            load_config(None, ["tracking.log_model=true", f"tracking.report_to={tracker}"])
    assert load_config(None, ["tracking.log_model=true", "tracking.report_to=wandb"]).tracking.log_model
    # the best checkpoint must be a step both evaluated and saved
    with pytest.raises(ConfigError, match=r"train.save_steps \(10\) must be a multiple of eval.steps \(3\)"):
        load_config(None, ["eval.beir=data/scifact", "eval.steps=3", "train.save_steps=10"])
    load_config(None, ["eval.beir=data/scifact", "eval.steps=5", "train.save_steps=10"])
    # and each range's edge itself is a valid value
    edges = ["loss.hard_label_weight=1", "lora.dropout=0", "model.checkpoint_ratio=1", "train.max_grad_norm=0"]
    load_config(None, [*edges, "train.batch_groups=1", "train.grad_accum=1", "train.warmup=0"])


def test_a_list_of_one_training_file_is_that_file(tmp_path):
    """`data.train_file=[a.jsonl]` is the same data as `data.train_file=a.jsonl`: one spelling, so a --resume of a
    run recorded either way is not refused as a changed recipe."""
    from tuner.train_setup import check_resume_config

    one = load_config(None, ["data.train_file=[a.jsonl]"])
    assert one.data.train_file == "a.jsonl" and one.data.train_files == ["a.jsonl"]
    assert load_config(None, ["data.train_file=[a.jsonl, b.jsonl]"]).data.train_file == ["a.jsonl", "b.jsonl"]
    load_config(None, ["data.train_file=a.jsonl"]).save(tmp_path / "config.yaml")
    check_resume_config(tmp_path / "config.yaml", one)
    with pytest.raises(ConfigError, match=r'data.train_file: saved "a.jsonl", new \["a.jsonl", "b.jsonl"\]'):
        check_resume_config(tmp_path / "config.yaml", load_config(None, ["data.train_file=[a.jsonl, b.jsonl]"]))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=-1", "train.lr: must be > 0"),
        ("train.warmup=-3", "train.warmup: must be >= 0"),
        ("train.max_steps=0", "train.max_steps: must be >= 1, or -1"),
        ("train.max_steps=-5", "train.max_steps: must be >= 1, or -1"),
        ("train.save_steps=-1", "train.save_steps: must be >= 0"),
        ("model.max_length=0", "model.max_length: must be >= 1"),
        ("lora.r=0", "lora.r: must be >= 1"),
        ("lora.dropout=2", r"lora.dropout: must be in \[0, 1\)"),
        ("lora.target_modules=[]", "lora.target_modules: must be 'all-linear' or a non-empty list"),
        ("eval.top_k=0", "eval.top_k: must be >= 1"),
        ("data.max_groups=0", "data.max_groups: must be >= 1"),
        ("eval.metrics=[ndcg]", "eval.metrics: metric 'ndcg' needs a cutoff"),
        ("eval.metrics=[bleu@4]", "eval.metrics: unknown metric 'bleu@4'"),
        ("model.attn_implementation=fast", "model.attn_implementation: 'fast' is not one of sdpa"),
        ("eval.metrics=[]", "eval.metrics: must name at least one metric"),  # was an IndexError after mining
        ("loss.pos_weight=-5", "loss.pos_weight: must be > 0"),  # the loss went unbounded below
        ("loss.pos_weight=0", "loss.pos_weight: must be > 0"),  # no positive term at all
        # the edges: each of these would train nothing, or divide by zero, without a word
        ("train.lr=0", "train.lr: must be > 0"),
        ("train.epochs=0", "train.epochs: must be > 0"),
        ("lora.dropout=1", r"lora.dropout: must be in \[0, 1\)"),
        ("model.checkpoint_ratio=0", r"model.checkpoint_ratio: must be in \(0, 1\]"),
        ("loss.hard_label_weight=1.5", r"loss.hard_label_weight: must be in \[0, 1\]"),
        ("train.batch_groups=0", "train.batch_groups: must be >= 1"),
        ("train.grad_accum=0", "train.grad_accum: must be >= 1"),
    ],
)
def test_values_out_of_range_name_the_override(tmp_path, override, message):
    """A number outside what it can mean fails when the recipe loads (before torch), naming the key; a value
    that came from the command line is blamed on the override, not on the recipe file."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  lr: 1.0e-4\n")
    with pytest.raises(ConfigError, match=rf"^override '{re.escape(override)}': {message}"):
        load_config(recipe, [override])
    key, value = override.split("=", 1)
    section, name = key.split(".")
    recipe.write_text(f"{section}:\n  {name}: {value}\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(recipe))}: {message}"):
        load_config(recipe)


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
@pytest.mark.parametrize("key", ["train.lr", "train.warmup", "train.max_grad_norm", "loss.temperature", "train.epochs"])
def test_non_finite_numbers_are_refused(key, value):
    """YAML's .nan/.inf are floats that every range check lets through (nan < 0 is False): a run would train to
    a NaN adapter and exit 0."""
    with pytest.raises(ConfigError, match=rf"^override '{re.escape(key)}={re.escape(value)}': {key}: must be a finite"):
        load_config(None, [f"{key}={value}"])


def test_an_unknown_override_key_and_ood_without_dev_are_named(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  lr: 1.0e-4\n")
    with pytest.raises(ConfigError, match=r"^override 'train.lrr=1': unknown key 'train.lrr'"):
        load_config(recipe, ["train.lrr=1"])
    # an unknown section (or a key under an unknown key) that only an override brings in names the override
    with pytest.raises(ConfigError, match=r"^override 'foo.bar=1': unknown key 'foo'"):
        load_config(recipe, ["foo.bar=1"])
    with pytest.raises(ConfigError, match=r"^override 'foo.bar=1': unknown key 'foo'"):
        load_config(None, ["foo.bar=1"])
    with pytest.raises(ConfigError, match=r"^override 'train.lr.x=1': "):
        load_config(None, ["train.lr.x=1"])
    with pytest.raises(ConfigError, match=r"^override 'model.foo.bar=1': unknown key 'model.foo'"):
        load_config(recipe, ["model.foo.bar=1"])
    # the recipe's own unknown key stays the recipe's, even when an override adds to it
    recipe.write_text("foo:\n  a: 1\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(recipe))}: unknown key 'foo'"):
        load_config(recipe, ["foo.bar=1"])
    with pytest.raises(ConfigError, match=r"eval\.ood: .* set eval\.beir \(or eval\.data\) too, or eval\.ood=null"):
        load_config(None, ["eval.ood=data/cranfield", "eval.beir=null"])
    with pytest.raises(ConfigError, match=r"loss\.teacher_temperature: must be > 0"):
        load_config(None, ["loss.teacher_temperature=0"])


def test_an_unknown_key_suggests_the_close_one_or_its_section():
    """A typo ('train.max_step', 'trian') and a section's key given without its section ('max_steps', 'split')
    name what was meant before the list of known keys; a key close to nothing names none."""
    cases = [
        ("train.max_step=100", "did you mean 'train.max_steps'? known in this section: batch_groups"),
        ("trian.max_steps=100", "did you mean 'train'? known in this section: data, eval"),
        ("max_steps=100", "did you mean 'train.max_steps'? known in this section: data, eval"),
        ("split=dev", "did you mean 'data.split' or 'eval.split'? known in this section: data, eval"),
        # a key of another section: that one, not a close key of this section of another meaning (eval.steps)
        ("eval.max_steps=3", "did you mean 'train.max_steps'? known in this section: base_cache_dir"),
        ("train.top_k=5", "did you mean 'eval.top_k'? known in this section: batch_groups"),
        ("zzz=1", "unknown key 'zzz' (known in this section: data, eval"),
    ]
    for override, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(None, [override])


def test_an_override_with_an_empty_key_is_named():
    with pytest.raises(ConfigError, match=r"override '=3': expected section.key=value"):
        load_config(None, ["=3"])
    with pytest.raises(ConfigError, match=r"override 'train.=3': expected section.key=value"):
        load_config(None, ["train.=3"])
    # a scalar for a whole section is named on itself, not on the next override that walks into it
    with pytest.raises(ConfigError, match=r"^override 'train=5': 'train' is a section; set its fields as train.KEY"):
        load_config(None, ["train=5", "train.max_steps=2"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.scheduler=cosin", "train.scheduler: 'cosin' is not a name transformers knows; did you mean cosine"),
        ("train.optim=adamw", "train.optim: 'adamw' is not a name transformers knows"),
    ],
)
def test_names_transformers_must_know_are_checked_before_any_work(override, message):
    from tuner.train_setup import check_before_work

    with pytest.raises(ConfigError, match=message):
        check_before_work(load_config(None, [override]))
    with pytest.raises(FileNotFoundError, match=r"eval.beir: '/no/such/beir' is not a directory"):
        check_before_work(load_config(None, ["eval.beir=/no/such/beir"]))
    scifact = str(Path(__file__).resolve().parent.parent / "data" / "scifact")
    check_before_work(load_config(None, ["train.scheduler=linear", "train.optim=adamw_torch", f"data.beir={scifact}"]))


def test_the_training_data_and_a_local_base_are_checked_before_any_work(tmp_path):
    """A training file or a local base that is not there fails before the run folder is made (it was found after
    the folder and the tokenizer, about 10 s in); so does a recipe with no training data at all."""
    from tuner.cli import main
    from tuner.train_setup import check_before_work

    with pytest.raises(FileNotFoundError, match=r"^data.train_file: .*nope\.jsonl: no such file"):
        check_before_work(load_config(None, [f"data.train_file={tmp_path / 'nope.jsonl'}"]))
    with pytest.raises(ConfigError, match=r"^data: set data.train_file"):
        check_before_work(load_config(None))
    train = tmp_path / "train.jsonl"
    train.write_text('{"query": "q", "pos": ["a"], "neg": ["b"]}\n')
    with pytest.raises(Exception, match=r"model '.*no-base' not found"):
        check_before_work(load_config(None, [f"data.train_file={train}", f"model.name_or_path={tmp_path / 'no-base'}"]))
    out = tmp_path / "run"
    argv = ["train", str(Path(__file__).resolve().parent.parent / "recipes" / "tiny-cpu.yaml"), f"output.dir={out}"]
    assert main([*argv, f"data.train_file={tmp_path / 'nope.jsonl'}"]) == 2
    assert not out.exists()


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
    # the recipe first, as `tuner train` takes it, or with --recipe: the same listing
    recipe = str(Path(__file__).resolve().parent.parent / "recipes" / "tiny-cpu.yaml")
    assert main(["config", recipe, "train.max_steps=7"]) == 0
    listed = capsys.readouterr().out
    assert re.search(r"^train\.max_steps\s+7\s", listed, re.M) and '"tiny-cpu"' in listed
    assert main(["config", "--recipe", recipe, "train.max_steps=7"]) == 0
    assert capsys.readouterr().out == listed


def test_recipe_file_problems_are_named(tmp_path):
    """A key given twice (YAML keeps the last silently), a bad byte, a folder for a file: one error each."""
    dup = tmp_path / "dup.yaml"
    dup.write_text("train:\n  lr: 1.0e-4\n  epochs: 1\n  lr: 5.0e-4\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml:4:3: invalid YAML: key 'lr' is given twice \(first on line 2"):
        load_config(dup)
    # PyYAML's own message spans lines and names "<unicode string>"; ours is one line with file:line:column
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  lr: [1, 2\nmodel: x\n")
    with pytest.raises(ConfigError) as info:
        load_config(broken)
    assert re.fullmatch(
        r".*broken\.yaml:3:6: invalid YAML: expected ',' or ']', but got ':' \(while parsing a .*\)", str(info.value)
    )
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: x\ntrain:\n  run_name: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin\.yaml:3: not UTF-8 text"):
        load_config(latin)
    with pytest.raises(FileNotFoundError, match="is a directory"):
        load_config(tmp_path)
    bom = tmp_path / "bom.yaml"
    bom.write_bytes(b"\xef\xbb\xbftrain:\n  lr: 2.0e-4\n")
    assert load_config(bom).train.lr == pytest.approx(2e-4)
    # an empty recipe (or one of comments only) is not "every default": that would train the 4B from the hub
    empty = tmp_path / "empty.yaml"
    for text in ("", "# nothing yet\n"):
        empty.write_text(text)
        with pytest.raises(ConfigError, match=r"empty\.yaml: the recipe is empty"):
            load_config(empty)


# ------------------------------------------------------------------------------------------- wandb sweeps
ROOT = Path(__file__).resolve().parent.parent
SWEEPS = sorted((ROOT / "recipes" / "sweeps").glob("*.yaml"))


def test_output_dir_expands_environment_variables_and_names_an_unset_one(monkeypatch):
    monkeypatch.setenv("TRIAL", "t42")
    assert load_config(None, ["output.dir=runs/$TRIAL/${TRIAL}-x"]).output.dir == "runs/t42/t42-x"
    assert load_config(None, ["output.dir=runs/plain"]).output.dir == "runs/plain"
    monkeypatch.delenv("NOT_SET_HERE", raising=False)
    with pytest.raises(ConfigError, match=r"output.dir: environment variable NOT_SET_HERE is not set"):
        load_config(None, ["output.dir=runs/${NOT_SET_HERE}"])


def test_a_none_override_is_null_as_a_sweep_agent_writes_it():
    assert load_config(None, ["data.max_groups=None"]).data.max_groups is None
    assert load_config(None, ["data.max_groups=null"]).data.max_groups is None


def _sample(spec: dict):
    """One value of a sweep parameter, of the type the sweep would send."""
    if "values" in spec:
        return spec["values"][-1]
    if "value" in spec:
        return spec["value"]
    return spec["min"]


@pytest.mark.parametrize("sweep", SWEEPS, ids=[p.name for p in SWEEPS])
def test_sweeps_build_runs_the_recipe_accepts_each_in_its_own_directory_chosen_on_dev(sweep, monkeypatch):
    """The command a wandb agent builds from each shipped sweep (wandb's own functions fill in the macros) is a
    valid `tuner train` line: every parameter a recipe key, the trial's run id in its run directory, the metric
    one the run summary has, and the dev set not the test queries."""
    import yaml
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    spec = yaml.safe_load(sweep.read_text())
    args = {name: {"value": _sample(p)} for name, p in spec["parameters"].items()}
    macros = create_sweep_command_args({"args": args})
    macros["env"] = ["/usr/bin/env"]
    argv: list[str] = []
    for chunk in create_sweep_command(list(spec["command"])):  # the agent's loop, as wandb_agent.py runs it
        chunk = str(chunk)
        argv += macros[chunk[2:-1]] if chunk.startswith("${") and chunk.endswith("}") else [chunk]
    assert argv[:3] == ["/usr/bin/env", "tuner", "train"]
    recipe, overrides = argv[3], argv[4:]
    assert (ROOT / recipe).is_file()
    monkeypatch.setenv("WANDB_RUN_ID", "abc123")  # what the agent sets for each trial
    config = load_config(ROOT / recipe, overrides)
    assert config.output.dir == "runs/sweep/abc123"
    assert config.eval.base_cache_dir == "runs/sweep/base-cache"  # the base is evaluated once per sweep
    for name, value in args.items():  # the sampled values arrived
        section, key = name.split(".")
        assert getattr(getattr(config, section), key) == value["value"], name
    assert config.eval.beir is None and config.eval.data == "runs/dev.jsonl"  # chosen on dev, not test
    assert config.data.train_file == "runs/tr.jsonl" and config.data.beir is None
    assert config.tracking.report_to == "wandb"
    stage, metric = spec["metric"]["name"].split("/")
    assert stage == "final" and metric in config.eval.metrics  # summarize_to_tracker's key for the dev set


def test_sweeps_shipped():
    assert {p.name for p in SWEEPS} >= {"qwen3-reranker-4b-lora.yaml", "tiny-cpu.yaml"}


def test_a_boolean_or_a_word_is_not_a_number():
    """YAML's `true` is not LoRA rank 1, nor is a word a learning rate (a float("fast") crash after the fact)."""
    with pytest.raises(ConfigError, match=r"^override 'lora\.r=true': lora\.r: expected int, got bool True"):
        load_config(None, ["lora.r=true"])
    with pytest.raises(ConfigError, match=r"^override 'train\.lr=fast': train\.lr: expected float, got str 'fast'"):
        load_config(None, ["train.lr=fast"])


def test_an_override_value_may_hold_an_equals_sign():
    """Only the first `=` splits key from value: an instruction with an `=` in it is kept whole."""
    config = load_config(None, ["data.instruction=Find passages where x=y holds"])
    assert config.data.instruction == "Find passages where x=y holds"


def test_a_recipe_is_named_after_its_file_unless_it_says(tmp_path):
    """The name is the run's default folder (runs/<name>): two recipes without a `name:` do not share one."""
    recipe = tmp_path / "scifact-lora.yaml"
    recipe.write_text("train:\n  lr: 1.0e-4\n")
    assert load_config(recipe).name == "scifact-lora"
    recipe.write_text("name: mine\ntrain:\n  lr: 1.0e-4\n")
    assert load_config(recipe).name == "mine"
