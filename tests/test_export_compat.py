"""Exports load in transformers, sentence-transformers and (by command) vLLM, and score as tuner does."""

from __future__ import annotations

import json
import shlex
import shutil

import pytest
import torch
from exporting import RUN_INSTRUCTION, make_run

from tuner.chat_template import pair_messages, template_kwargs
from tuner.cli import main
from tuner.contract import PromptEncoder, render_prompt
from tuner.export import export
from tuner.reference import reference_scores
from tuner.scoring import Reranker

MAX_LENGTH = 160
LONG = " ".join(["The wing section produces lift in proportion to dynamic pressure."] * 30)
PAIRS = [
    ("what produces lift on a wing?", "Lift is produced by the pressure difference across the wing."),
    ("what produces lift on a wing?", LONG),  # truncated at MAX_LENGTH
    ("量子计算的基本原理是什么", "量子计算利用叠加和纠缠来处理信息。"),
    ("¿Cuál es la capital de Francia?", "París es la capital de Francia."),
    ("empty", ""),
]


def _ids(tokenizer, messages) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


@pytest.fixture(scope="module")
def exports(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("compat")
    run = make_run(root / "run", tiny_model_dir)
    export(run, root / "out", formats=["merged", "seq-cls"], device="cpu")
    return root / "out"


@pytest.fixture(scope="module")
def ours(exports):
    return Reranker.from_pretrained(exports / "merged", device="cpu", dtype="float32", max_length=MAX_LENGTH)


def test_merged_loads_in_automodel_and_equals_the_model_card_code(exports, ours):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(exports / "merged", dtype=torch.float32).eval()
    assert type(model).__name__ == "Qwen3ForCausalLM"
    tokenizer = AutoTokenizer.from_pretrained(exports / "merged")
    triples = [(q, d, RUN_INSTRUCTION) for q, d in PAIRS]
    card = reference_scores(model, tokenizer, triples, max_length=MAX_LENGTH, return_logits=True)
    assert ours.encode([triples[1]])[0].__len__() == MAX_LENGTH
    assert ours.score_pairs(PAIRS, normalize=False) == pytest.approx(card, abs=1e-4)


def test_seq_cls_loads_and_its_logit_is_yes_minus_no(exports):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    seq = AutoModelForSequenceClassification.from_pretrained(exports / "seq-cls", dtype=torch.float32).eval()
    causal = AutoModelForCausalLM.from_pretrained(exports / "merged", dtype=torch.float32).eval()
    assert seq.config.num_labels == 1 and seq.score.bias is None and seq.score.weight.shape[0] == 1
    tokenizer = AutoTokenizer.from_pretrained(exports / "seq-cls")
    messages = [pair_messages(q, d) for q, d in PAIRS[:4] if d is not LONG]
    for side in ("left", "right"):  # the pad id locates the last token either way
        tokenizer.padding_side = side
        batch = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, padding=True, return_tensors="pt"
        )
        with torch.no_grad():
            logit = seq(**batch).logits[:, 0]
            rows = [causal(input_ids=torch.tensor([_ids(tokenizer, m)])).logits[0, -1].float() for m in messages]
        yes_minus_no = torch.stack([r[9693] - r[2152] for r in rows])
        assert torch.allclose(logit, yes_minus_no, atol=1e-4), side
        assert (yes_minus_no.max() - yes_minus_no.min()) > 1e-3


@pytest.mark.parametrize("fmt", ["merged", "seq-cls"])
def test_sentence_transformers_cross_encoder_scores_equal_ours(exports, ours, fmt):
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(exports / fmt), max_length=MAX_LENGTH, device="cpu")
    identity = torch.nn.Identity()
    st = model.predict(PAIRS, activation_fn=identity, batch_size=4).tolist()
    assert st == pytest.approx(ours.score_pairs(PAIRS, normalize=False), abs=1e-4)
    # another instruction: sentence-transformers' prompt= becomes the system message the template reads
    st_custom = model.predict(PAIRS, prompt="Find the answer", activation_fn=identity).tolist()
    assert st_custom == pytest.approx(ours.score_pairs(PAIRS, instruction="Find the answer", normalize=False), abs=1e-4)
    assert st_custom != pytest.approx(st, abs=1e-4)
    # its default activation is the sigmoid: probabilities equal the uncalibrated ones
    probs = model.predict(PAIRS[:2]).tolist()
    assert probs == pytest.approx(torch.sigmoid(torch.tensor(st[:2])).tolist(), abs=1e-6)


def test_sentence_transformers_empty_prompt_is_the_default_and_no_instruction_is_the_template_variable(exports, ours):
    """sentence-transformers adds the system message only for a non-empty prompt (`if prompt and ...`), so
    `prompt=""` scores with the export's default instruction; export's template check used to render a system
    message holding "" that sentence-transformers never sends. "No instruction" is the template variable the card
    names, and pair_messages builds what sentence-transformers builds."""
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(exports / "merged"), max_length=MAX_LENGTH, device="cpu")
    identity = torch.nn.Identity()
    default = ours.score_pairs(PAIRS, normalize=False)
    none = ours.score_pairs(PAIRS, instruction="", normalize=False)
    assert none != pytest.approx(default, abs=1e-4)
    assert model.predict(PAIRS, prompt="", activation_fn=identity).tolist() == pytest.approx(default, abs=1e-4)
    kwargs = {"chat_template": {"instruction": ""}}
    st_none = model.predict(PAIRS, processing_kwargs=kwargs, activation_fn=identity).tolist()
    assert st_none == pytest.approx(none, abs=1e-4)
    assert pair_messages("q", "d", "") == pair_messages("q", "d")
    card = (exports / "merged" / "README.md").read_text()
    assert 'processing_kwargs={"chat_template": {"instruction": ""}}' in card
    assert '`{"instruction": ""}` for none' in card


@pytest.mark.parametrize("fmt", ["merged", "seq-cls"])
def test_sentence_transformers_without_max_length_cuts_where_tuner_does(exports, fmt):
    """Without `max_length=`, sentence-transformers reads the tokenizer's model_max_length (capped by the config's
    max_position_embeddings, 40960): the export records tuner.json's max_length there, so a document longer than it
    is cut at the same place as tuner cuts it, and vLLM's context (max_position_embeddings) is left as it was."""
    from sentence_transformers import CrossEncoder

    meta = json.loads((exports / fmt / "tuner.json").read_text())
    assert json.loads((exports / fmt / "tokenizer_config.json").read_text())["model_max_length"] == meta["max_length"]
    assert json.loads((exports / fmt / "config.json").read_text())["max_position_embeddings"] == 40960
    model = CrossEncoder(str(exports / fmt), device="cpu")
    assert model.max_seq_length == meta["max_length"] == 512
    reranker = Reranker.from_pretrained(exports / fmt, device="cpu", dtype="float32")
    pairs = [("what produces lift on a wing?", LONG * 3), PAIRS[0]]
    assert len(reranker.encode([(*pairs[0], None)])[0]) == 512  # the long document is cut
    st = model.predict(pairs, activation_fn=torch.nn.Identity()).tolist()
    assert st == pytest.approx(reranker.score_pairs(pairs, normalize=False), abs=1e-4)


def test_chat_template_renders_the_contract_prompt_bit_for_bit(exports, tokenizer):
    from transformers import AutoTokenizer

    exported = AutoTokenizer.from_pretrained(exports / "merged")
    assert exported.chat_template == (exports / "merged" / "chat_template.jinja").read_text()
    card_ids = PromptEncoder(tokenizer, max_length=10**6, safe_text=False)
    cases = [(q, d, i) for q, d in PAIRS for i in (None, "Custom instruction", "")]
    cases.append(("q", {"title": "Titel", "text": "Körper"}, None))
    for query, doc, instruction in cases:
        expected = render_prompt(query, doc, RUN_INSTRUCTION if instruction is None else instruction)
        messages = pair_messages(query, doc, instruction)
        kwargs = template_kwargs(instruction)  # "" (no instruction) is the template variable, never a message
        rendered = exported.apply_chat_template(messages, tokenize=False, **kwargs)
        assert rendered == expected
        assert list(exported.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"]) == (
            card_ids.encode(query, doc, RUN_INSTRUCTION if instruction is None else instruction)
        )
        # the structured message format (content parts) renders the same
        structured = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in messages]
        assert exported.apply_chat_template(structured, tokenize=False, **kwargs) == expected
    # an `instruction` template variable (vLLM chat_template_kwargs) wins over the baked default
    kw = exported.apply_chat_template(pair_messages("q", "d"), tokenize=False, instruction="From kwargs")
    assert kw == render_prompt("q", "d", "From kwargs")


def test_the_template_takes_instruct_as_another_name_for_the_instruction_variable(tokenizer):
    from tuner.chat_template import build_chat_template

    template = build_chat_template(RUN_INSTRUCTION)
    rendered = tokenizer.apply_chat_template(
        pair_messages("q", "d"), chat_template=template, tokenize=False, instruct="From instruct"
    )
    assert rendered == render_prompt("q", "d", "From instruct")


def test_the_instruction_variable_wins_over_a_system_message(tokenizer):
    from tuner.chat_template import build_chat_template

    template = build_chat_template(RUN_INSTRUCTION)
    messages = pair_messages("q", "d", "From system")
    assert tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False) == render_prompt(
        "q", "d", "From system"
    )
    rendered = tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, instruction="From kwargs"
    )
    assert rendered == render_prompt("q", "d", "From kwargs")


def test_an_export_whose_default_is_no_instruction_renders_none(tokenizer):
    """A run whose instruction is "" (no instruction won `tuner instruct`) exports a template whose default is no
    instruction, as tuner scores it, not the model card's."""
    from tuner.chat_template import build_chat_template

    rendered = tokenizer.apply_chat_template(
        pair_messages("q", "d"), chat_template=build_chat_template(""), tokenize=False
    )
    assert rendered == render_prompt("q", "d", "")


def test_only_tuners_own_templates_are_recognised_and_regenerated(tmp_path):
    from tuner.chat_template import build_chat_template, is_tuner_template
    from tuner.instruct import _regenerated_templates

    assert is_tuner_template(build_chat_template("Find X")) and is_tuner_template(build_chat_template())
    own = "{%- for message in messages %}{{ message.content }}{% endfor %}"
    assert not is_tuner_template(own) and not is_tuner_template(None)
    (tmp_path / "chat_template.jinja").write_text(own, encoding="utf-8")
    assert _regenerated_templates(tmp_path, "Find X") == {}  # a model's own template is left alone


def test_vllm_command_for_merged_and_seq_cls(exports, capsys):
    assert main(["serve", "--engine", "vllm", str(exports / "merged"), "--port", "8011"]) == 0
    argv = shlex.split(capsys.readouterr().out)
    assert argv[:3] == ["vllm", "serve", str(exports / "merged")]
    assert argv[argv.index("--runner") + 1] == "pooling"
    overrides = json.loads(argv[argv.index("--hf-overrides") + 1])
    assert overrides == {
        "architectures": ["Qwen3ForSequenceClassification"],
        "classifier_from_token": ["no", "yes"],
        "is_original_qwen3_reranker": True,
    }
    template = argv[argv.index("--chat-template") + 1]
    assert template == str(exports / "merged" / "chat_template.jinja")
    assert argv[argv.index("--port") + 1] == "8011" and argv[argv.index("--max-model-len") + 1] == "512"
    # named by the export, not "merged": the same name as its seq-cls format under vLLM or tuner serve
    assert argv[argv.index("--served-model-name") + 1] == exports.name

    assert main(["serve", "--engine", "vllm", str(exports / "seq-cls"), "--api-key-env", "MY_KEY"]) == 0
    line = capsys.readouterr().out.strip()
    assert "--hf-overrides" not in line and "--chat-template" in line
    assert line.startswith("env VLLM_API_KEY=${MY_KEY} vllm serve ")  # the key itself is never printed


def test_the_default_served_name_is_the_export_s_whichever_format_and_engine(exports, tmp_path, monkeypatch, capsys):
    """Both formats of a multi-format export answered to their folder's name ("merged", "seq-cls"), so a client's
    `model` broke when the export moved from `tuner serve` (merged) to vLLM (seq-cls); a hub id lost its owner
    ("Qwen3-Reranker-4B"), so a client written for `vllm serve Qwen/Qwen3-Reranker-4B` got 404."""
    import uvicorn

    from tuner import serve as serve_mod
    from tuner.instruct import apply_meta
    from tuner.serve_vllm import default_served_name

    assert default_served_name(exports / "merged") == default_served_name(exports / "seq-cls") == exports.name
    # the model cards (a hub repo's README) are titled by the export too, and stay so when --apply rewrites them
    title = f"\n# {exports.name}: Qwen3-Reranker LoRA fine-tune, "
    assert all(title in (exports / fmt / "README.md").read_text() for fmt in ("merged", "seq-cls"))
    copy = tmp_path / "copy"
    shutil.copytree(exports, copy)
    apply_meta(copy, {"calibration": {"temperature": 2.0, "bias": 0.0}})
    assert "\n# copy: Qwen3-Reranker LoRA fine-tune, " in (copy / "merged" / "README.md").read_text()
    assert default_served_name("Qwen/Qwen3-Reranker-4B") == "Qwen/Qwen3-Reranker-4B"
    single = tmp_path / "merged"  # a one-format export is the folder it was written to: its own name
    shutil.copytree(exports / "merged", single)
    assert default_served_name(single) == "merged"
    assert default_served_name(tmp_path) == tmp_path.name
    # a run's weights answer to the run's name, a checkpoint with it (they answered "adapter" / "checkpoint-N")
    run = tmp_path / "lr2e-4"
    for folder in ("adapter", "model", "checkpoints/checkpoint-40"):
        (run / folder).mkdir(parents=True)
    assert default_served_name(run / "adapter") == "adapter"  # no config.yaml: not a run's
    (run / "config.yaml").write_text("name: lr2e-4\n")
    assert default_served_name(run / "adapter") == default_served_name(run / "model") == "lr2e-4"
    assert default_served_name(run / "checkpoints" / "checkpoint-40") == "lr2e-4/checkpoint-40"
    (tmp_path / "best").symlink_to(run)  # a stable name for the winner is the name clients send
    assert default_served_name(tmp_path / "best" / "adapter") == "best"
    monkeypatch.chdir(run / "adapter")
    assert default_served_name(".") == "lr2e-4"
    # and `tuner serve --help` says so (it said "any other directory by its name", a run's adapter included)
    assert main(["serve", "--help"]) == 0
    assert "a run's adapter or model by the run's name" in " ".join(capsys.readouterr().out.split())
    seen = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: None)
    create_app = serve_mod.create_app
    monkeypatch.setattr(
        serve_mod, "create_app", lambda r, **kw: seen.update(name=kw["model_name"]) or create_app(r, **kw)
    )
    assert main(["serve", str(exports / "merged"), "--device", "cpu"]) == 0
    assert seen["name"] == exports.name
    assert main(["serve", str(exports / "merged"), "--device", "cpu", "--model-name", "mine"]) == 0
    assert seen["name"] == "mine"


def test_vllm_command_errors(exports, tmp_path, capsys, monkeypatch):
    assert main(["serve", "--engine", "vllm", str(tmp_path)]) == 2
    assert "vLLM serves merged or seq-cls exports" in capsys.readouterr().err
    # the root of a multi-format export names the format folder to pass; a missing path says so
    assert main(["serve", "--engine", "vllm", str(exports)]) == 2
    assert f"a multi-format export; pass one of its formats, e.g. {exports / 'merged'}" in capsys.readouterr().err
    assert main(["serve", "--engine", "vllm", str(tmp_path / "nope")]) == 2
    assert "no such export directory" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path))  # no vllm executable
    assert main(["serve", "--engine", "vllm", "--exec", str(exports / "seq-cls")]) == 2
    assert "vllm is not installed" in capsys.readouterr().err


def test_vllm_command_spells_the_dtype_as_vllm_takes_it(tmp_path, capsys):
    """`tuner serve --engine vllm EXPORT --dtype bf16` printed `--dtype bf16`, which `vllm serve` (auto, half,
    float16, bfloat16, float, float32) rejects: tuner's short names are written out, and an unknown one is named."""
    export_dir = tmp_path / "seq-cls"
    export_dir.mkdir()
    (export_dir / "tuner.json").write_text(json.dumps({"format": "seq-cls", "max_length": 512}))
    (export_dir / "chat_template.jinja").write_text("{{ messages }}")
    for given, written in (("bf16", "bfloat16"), ("fp16", "float16"), ("fp32", "float32"), ("auto", "auto")):
        assert main(["serve", "--engine", "vllm", str(export_dir), "--dtype", given]) == 0
        argv = shlex.split(capsys.readouterr().out)
        assert argv[argv.index("--dtype") + 1] == written
    assert main(["serve", "--engine", "vllm", str(export_dir), "--dtype", "fp8"]) == 2
    err = capsys.readouterr().err
    assert "--dtype 'fp8'" in err and err.count("\n") == 1


def test_vllm_command_takes_max_length_and_needs_the_chat_template(tmp_path, capsys):
    """`--max-length` is the budget vLLM gets (`--max-model-len`, else tuner.json's); an export without its chat
    template is refused (vLLM would render Qwen's chat prompt, not the reranker's)."""
    export_dir = tmp_path / "merged"
    export_dir.mkdir()
    (export_dir / "tuner.json").write_text(json.dumps({"format": "merged", "max_length": 512}))
    (export_dir / "chat_template.jinja").write_text("{{ messages }}")
    for given, written in (([], "512"), (["--max-length", "1024"], "1024")):
        assert main(["serve", "--engine", "vllm", str(export_dir), *given]) == 0
        argv = shlex.split(capsys.readouterr().out)
        assert argv[argv.index("--max-model-len") + 1] == written
    # past the model's positions: refused as tuner's own engine refuses it, not left to vLLM's start on a GPU
    (export_dir / "config.json").write_text(json.dumps({"max_position_embeddings": 40960}))
    assert main(["serve", "--engine", "vllm", str(export_dir), "--max-length", "40961"]) == 2
    assert capsys.readouterr().err == (
        "tuner serve: error: --max-length: max_length 40961 is past the model's max_position_embeddings (40960): "
        "tokens beyond it sit at positions it never had; use at most 40960\n"
    )
    assert main(["serve", "--engine", "vllm", str(export_dir), "--max-length", "40960"]) == 0
    capsys.readouterr()
    (export_dir / "chat_template.jinja").unlink()
    assert main(["serve", "--engine", "vllm", str(export_dir)]) == 2
    assert "chat_template.jinja is missing" in capsys.readouterr().err
