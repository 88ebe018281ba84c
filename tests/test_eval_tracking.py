"""`tuner eval --report-to wandb|tensorboard`: the evaluation in the experiment tracker training logs to.

wandb is replaced by a recorder (no server, no files) except in the offline smoke test at the end."""

from __future__ import annotations

import json
import sys
import time
import types

import pytest
from mini_beir import DOCS
from train_helpers import random_adapter


@pytest.fixture(scope="module")
def tuner_run(tmp_path_factory, tiny_model_dir):
    """A tuner run folder as training leaves it for eval: config.yaml (its data, its tracking: wandb, a project, a
    group, log_model), adapter/, logs/wandb-run-id. Its training data holds d1, the relevant document of q1."""
    from tuner.config import Config

    root = tmp_path_factory.mktemp("tracked")
    run = root / "quick"
    random_adapter(tiny_model_dir, run / "adapter")
    title, text = DOCS["d1"]
    train = root / "train.jsonl"
    train.write_text(json.dumps({"query": "q", "pos": [f"{title} {text}"], "neg": ["x"]}) + "\n", encoding="utf-8")
    config = Config()
    config.data.train_file = str(train)
    config.tracking.report_to = "wandb"
    config.tracking.project = "team-rerank"
    config.tracking.group = "scifact-lora"
    config.tracking.log_model = True
    config.save(run / "config.yaml")
    (run / "logs").mkdir()
    (run / "logs" / "wandb-run-id").write_text("abc123\n", encoding="utf-8")
    return run


class _Summary(dict):
    pass


class _Config(dict):
    def update(self, values, allow_val_change=False):  # wandb's signature
        super().update(values)


class _Run:
    def __init__(self, recorder, **kwargs):
        self.kwargs, self.recorder = kwargs, recorder
        self.id, self.name, self.offline = "fake01", kwargs.get("name"), recorder.offline
        self.summary, self.config = _Summary(), _Config(kwargs.get("config") or {})
        self.logged, self.used, self.finished = [], [], []

    def log(self, values):
        self.logged.append(values)

    def use_artifact(self, name):
        self.used.append(name)

    def finish(self, exit_code=None):
        self.finished.append(exit_code)


class _WandbError(Exception):
    pass


def fake_wandb(monkeypatch, offline: bool = False, error: str | None = None) -> types.ModuleType:
    """A `wandb` module that records what tuner gives it: `.runs` holds each `wandb.init`'s run."""
    module = types.ModuleType("wandb")
    module.runs, module.offline = [], offline
    module.errors = types.SimpleNamespace(Error=_WandbError)

    def init(**kwargs):
        if error:
            raise _WandbError(error)
        module.runs.append(_Run(module, **kwargs))
        return module.runs[-1]

    module.init = init
    module.Table = lambda columns, data: {"table": columns, "data": data}
    module.Image = lambda path: {"image": path}
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


def _eval_argv(model, beir_dir, out, *more):
    argv = ["eval", "--model", str(model), "--beir", str(beir_dir), "--top-k", "5", "--out", str(out)]
    return [*argv, "--no-progress", "--cache-dir", "", *more]


def test_eval_report_to_wandb_logs_settings_figures_table_and_lineage(
    tmp_path, tiny_model_dir, beir_dir, tuner_run, monkeypatch, capsys
):
    """One wandb run of job_type eval per `tuner eval`, in the training run's project and group (over
    $WANDB_PROJECT / $WANDB_RUN_GROUP), naming the run and its wandb id; its summary is metrics.json's figures by
    role (first_stage, base, tuned), delta/ and p of tuned vs base, and seen/ and unseen/ as training names them;
    the report table and report.png are logged, the run's model artifact used, the run finished."""
    from tuner.cli import main

    wandb = fake_wandb(monkeypatch)
    monkeypatch.setenv("WANDB_PROJECT", "elsewhere")
    monkeypatch.setenv("WANDB_RUN_GROUP", "other-group")
    out = tmp_path / "scifact-test"
    argv = _eval_argv(tiny_model_dir, beir_dir, out, "--adapter", str(tuner_run / "adapter"), "--report-to", "wandb")
    assert main(argv) == 0
    assert "logged to wandb run quick on scifact-test (fake01)" in capsys.readouterr().out
    (run,) = wandb.runs
    kw = run.kwargs
    assert (kw["project"], kw["group"], kw["job_type"], kw["name"]) == (
        "team-rerank",
        "scifact-lora",
        "eval",
        "quick on scifact-test",
    )
    assert kw["dir"] == str(out)
    config = run.config
    assert (config["dataset"], config["split"], config["candidates"], config["top_k"]) == ("mini", "test", "bm25", 5)
    assert (config["max_queries"], config["seed"], config["instructions"]) == (None, 0, [None])
    assert (config["model"], config["adapter"]) == (str(tiny_model_dir), str(tuner_run / "adapter"))
    assert (config["train_run"], config["train_wandb_id"]) == (str(tuner_run), "abc123")
    assert config["metrics"] == ["ndcg@10", "mrr@10", "map@100", "recall@100"] and config["queries"] == 5

    summary = json.loads((out / "metrics.json").read_text())
    first, base, tuned = summary["systems"]
    figures = run.summary
    for key, entry in (("first_stage", first), ("base", base), ("tuned", tuned)):
        for metric, value in entry["metrics"].items():
            assert figures[f"{key}/{metric}"] == value
    for metric in summary["metrics_order"]:
        assert figures[f"delta/{metric}"] == pytest.approx(tuned["metrics"][metric] - base["metrics"][metric])
    assert figures["p"] == tuned["vs_reference"]["ndcg@10"]["p_randomization"]
    assert figures["queries"] == 5
    parts = summary["training_overlap"]["parts"]
    assert (figures["seen/queries"], figures["unseen/queries"]) == (1, 4)  # q1: d1 is a training positive
    unseen = {row["label"]: row for row in parts["unseen"]["systems"]}
    label = tuned["label"]  # the adapter's row is named by its run (the key stays its role, "tuned")
    assert figures["unseen/tuned/ndcg@10"] == unseen[label]["metrics"]["ndcg@10"]
    assert figures["unseen/base/ndcg@10"] == unseen["base"]["metrics"]["ndcg@10"]
    assert figures["unseen/delta/ndcg@10"] == unseen[label]["vs_reference"]["ndcg@10"]["delta"]
    assert figures["unseen/p"] == unseen[label]["vs_reference"]["ndcg@10"]["p_randomization"]
    assert "seen/tuned/ndcg@10" in figures and "seen/p" in figures

    (logged,) = run.logged
    table = logged["eval/report"]
    assert table["table"] == ["part", "queries", "system", *summary["metrics_order"], "delta ndcg@10", "p"]
    assert [row[:3] for row in table["data"]] == [
        ["all", 5, "first stage (BM25)"],
        ["all", 5, "base"],
        ["all", 5, label],
        ["seen", 1, "first stage (BM25)"],
        ["seen", 1, "base"],
        ["seen", 1, label],
        ["unseen", 4, "first stage (BM25)"],
        ["unseen", 4, "base"],
        ["unseen", 4, label],
    ]
    assert table["data"][2][3] == tuned["metrics"]["ndcg@10"] and table["data"][1][-1] is None  # the reference
    assert logged["eval/per_query_deltas"] == {"image": str(out / "report.png")}
    assert run.used == ["team-rerank/quick:latest"]  # the artifact tracking.log_model uploaded, named after the run
    assert run.finished == [None]

    # options over the run's recording; a model from no run: the environment's project and group, no artifact
    out2 = tmp_path / "other"
    argv = _eval_argv(tiny_model_dir, beir_dir, out2, "--compare", str(tuner_run / "adapter"), "--report-to", "wandb")
    assert main([*argv, "--run-name", "nightly", "--group", "g2"]) == 0
    run = wandb.runs[-1]
    assert (run.kwargs["project"], run.kwargs["group"], run.kwargs["name"]) == ("elsewhere", "g2", "nightly")
    assert run.config["train_runs"] == [] and run.used == []
    second = json.loads((out2 / "metrics.json").read_text())["systems"]
    assert run.summary["model/ndcg@10"] == second[1]["metrics"]["ndcg@10"]
    assert run.summary["compare/quick-adapter/p"] == second[2]["vs_reference"]["ndcg@10"]["p_randomization"]
    assert "delta/ndcg@10" not in run.summary  # no base and tuned: no headline delta


def test_eval_report_to_offline_wandb_skips_the_artifact(tmp_path, tiny_model_dir, beir_dir, tuner_run, monkeypatch):
    """Offline there is no server to look an artifact up on: the lineage link is skipped, quietly."""
    from tuner.cli import main

    wandb = fake_wandb(monkeypatch, offline=True)
    assert main([*_eval_argv(tuner_run, beir_dir, tmp_path / "o", "--report-to", "wandb")]) == 0
    (run,) = wandb.runs
    assert run.used == [] and run.finished == [None] and run.config["train_wandb_id"] == "abc123"


def test_eval_report_to_errors_are_one_line_before_any_model_loads(
    tmp_path, tiny_model_dir, beir_dir, monkeypatch, capsys
):
    """No wandb, or a wandb that cannot start a run (no API key): one line naming --report-to, exit 2, before any
    model loads and with no output folder left; an eval that fails after the run started closes it as failed;
    tracker options without their tracker are refused."""
    from tuner import eval_run
    from tuner.cli import main

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    load = eval_run.load_reranker
    monkeypatch.setattr(eval_run, "load_reranker", no_model)
    out = tmp_path / "out"
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    assert main(_eval_argv(tiny_model_dir, beir_dir, out, "--report-to", "wandb")) == 2
    assert "--report-to wandb: wandb is not installed" in capsys.readouterr().err and not out.exists()

    fake_wandb(monkeypatch, error="No API key configured. Use `wandb login` to log in.")
    assert main(_eval_argv(tiny_model_dir, beir_dir, out, "--report-to", "wandb")) == 2
    err = capsys.readouterr().err
    assert "--report-to wandb: wandb could not start a run (No API key configured" in err
    assert "WANDB_MODE=offline" in err and len(err.strip().splitlines()) == 1 and not out.exists()

    for option, value in (("--project", "p"), ("--group", "g"), ("--run-name", "n"), ("--tensorboard-dir", "d")):
        assert main([*_eval_argv(tiny_model_dir, beir_dir, out, option, value)]) == 2
        assert f"{option}: for --report-to" in capsys.readouterr().err
    assert main([*_eval_argv(tiny_model_dir, beir_dir, out, "--report-to", "wandb", "--tensorboard-dir", "d")]) == 2
    assert "--tensorboard-dir: for --report-to tensorboard" in capsys.readouterr().err

    wandb = fake_wandb(monkeypatch)

    def broken(*args, **kwargs):
        raise ValueError("the model is broken")

    monkeypatch.setattr(eval_run, "load_reranker", broken)
    assert main(_eval_argv(tiny_model_dir, beir_dir, out, "--report-to", "wandb")) == 2
    (run,) = wandb.runs
    assert run.finished == [1] and run.summary == {}
    monkeypatch.setattr(eval_run, "load_reranker", load)


def test_eval_report_to_tensorboard_writes_the_figures_and_the_table(tmp_path, tiny_model_dir, beir_dir, tuner_run):
    """--report-to tensorboard: the wandb summary's figures as scalars and the report table as text, in
    OUT/tensorboard or --tensorboard-dir."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tuner.cli import main

    out = tmp_path / "tb"
    assert main(_eval_argv(tuner_run, beir_dir, out, "--report-to", "tensorboard")) == 0
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    summary = json.loads((out / "metrics.json").read_text())
    tuned = summary["systems"][2]
    values = {tag: events.Scalars(tag)[0].value for tag in events.Tags()["scalars"]}
    assert values["tuned/ndcg@10"] == pytest.approx(tuned["metrics"]["ndcg@10"])
    assert values["delta/ndcg@10"] == pytest.approx(tuned["vs_reference"]["ndcg@10"]["delta"])
    assert values["seen/queries"] == 1 and values["unseen/queries"] == 4
    table = events.Tensors("eval/report/text_summary")[0].tensor_proto.string_val[0].decode()
    assert table.startswith("| part | queries | system | ndcg@10") and f"| all | 5 | {tuned['label']} |" in table

    other = tmp_path / "elsewhere"
    argv = _eval_argv(tuner_run, beir_dir, tmp_path / "tb2", "--report-to", "tensorboard", "--tensorboard-dir")
    assert main([*argv, str(other)]) == 0
    assert list(other.glob("events.out.tfevents.*")) and not (tmp_path / "tb2" / "tensorboard").exists()


def test_eval_report_to_wandb_offline_smoke(tmp_path, tiny_model_dir, beir_dir, monkeypatch):
    """The real wandb, offline: the run's files are in OUT/wandb."""
    pytest.importorskip("wandb")
    from tuner.cli import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "real"
    assert main(_eval_argv(tiny_model_dir, beir_dir, out, "--report-to", "wandb", "--max-queries", "2")) == 0
    (folder,) = (out / "wandb").glob("offline-run-*")
    assert list(folder.glob("run-*.wandb"))  # what `wandb sync` uploads
    assert list(folder.glob("files/media/table/eval/report_*.table.json"))  # the report table
    assert list(folder.glob("files/media/images/eval/per_query_deltas_*.png"))  # report.png


def _system(label, metrics, delta=None, p=None, **info):
    entry = {"label": label, "metrics": metrics, **info}
    if delta is not None:
        entry["vs_reference"] = {m: {"delta": delta, "p_randomization": p} for m in metrics}
    return entry


def test_eval_summary_keys_systems_by_role_and_the_readme_names_them():
    """Keys by the system's role, not its label (a run's name): with several instructions each row gets the
    instruction's tag and the headline delta/ and p are the first instruction's tuned row against the reference;
    two --compare systems of one name stay apart. The README names the keys eval_summary writes."""
    from pathlib import Path

    from tuner.eval_tracking import eval_summary

    m = {"ndcg@10": 0.5}
    summary = {
        "queries": 3,
        "metrics_order": ["ndcg@10"],
        "primary_metric": "ndcg@10",
        "instructions": [None, ""],
        "systems": [
            _system("first stage (BM25)", m, -0.1, 0.5),
            _system("base [default]", m, note="adapter disabled"),
            _system("base [none]", m, 0.01, 0.9, note="adapter disabled"),
            _system("listwise [default]", m, 0.2, 0.03),
            _system("listwise [none]", m, 0.1, 0.2),
            _system("a/adapter [default]", m, 0.05, 0.4),
            _system("a/adapter [none]", m, 0.06, 0.3),
        ],
    }
    figures, columns, rows = eval_summary(summary)
    assert {k for k in figures if k.endswith("/ndcg@10") and not k.startswith("delta/")} == {
        "first_stage/ndcg@10",
        "base-default/ndcg@10",
        "base-none/ndcg@10",
        "tuned-default/ndcg@10",
        "tuned-none/ndcg@10",
        "compare/a-adapter-default/ndcg@10",
        "compare/a-adapter-none/ndcg@10",
    }
    assert (figures["delta/ndcg@10"], figures["p"]) == (0.2, 0.03)
    assert figures["tuned-none/p"] == 0.2 and figures["base-none/p"] == 0.9 and "first_stage/p" not in figures
    assert len(rows) == 7 and columns[-2:] == ["delta ndcg@10", "p"]

    summary["instructions"] = [None]
    summary["systems"] = [summary["systems"][i] for i in (0, 1, 3, 5, 6)]
    for entry in summary["systems"]:
        entry["label"] = entry["label"].split(" [")[0]
    figures, _, _ = eval_summary(summary)
    assert "compare/a-adapter/ndcg@10" in figures and "compare/a-adapter-2/ndcg@10" in figures
    assert figures["tuned/ndcg@10"] == 0.5 and figures["delta/ndcg@10"] == 0.2

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    paragraph = readme.split("# --report-to wandb")[1].split("\n$T")[0]
    for name in ("first_stage/", "base/", "tuned/", "model/", "compare/<label>/", "delta/", "seen/", "unseen/"):
        assert name in paragraph
    for option in ("--project", "--group", "--run-name", "--report-to tensorboard", "OUT/wandb", "OUT/tensorboard"):
        assert option in paragraph


def test_an_eval_again_into_its_out_replaces_its_tensorboard_figures(tmp_path, tiny_model_dir, beir_dir):
    """A second eval into one OUT replaced report.md and metrics.json but added a second events file to
    OUT/tensorboard: tensorboard showed both evals' step-0 figures as one run's."""
    from tuner.cli import main

    out = tmp_path / "tb"
    for _ in range(2):
        assert main(_eval_argv(tiny_model_dir, beir_dir, out, "--report-to", "tensorboard")) == 0
        time.sleep(1.1)  # the events file's name holds the second it was made
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_the_training_runs_project_from_the_environment_is_found_by_eval(tmp_path, tiny_model_dir, monkeypatch):
    """tracking.project null (the default) takes $WANDB_PROJECT at training, and config.yaml keeps null: eval
    --report-to wandb, in a shell without the variable, logged into "tuner", not beside the training run, and
    looked its model artifact up there. start_tracking records where the run went; training_runs reads it."""
    pytest.importorskip("wandb")
    from tuner.config import Config
    from tuner.eval_tracking import training_runs
    from tuner.tracking import start_tracking

    run = tmp_path / "envrun"
    random_adapter(tiny_model_dir, run / "adapter")
    config = Config()
    config.tracking.report_to = "wandb"
    config.save(run / "config.yaml")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("WANDB_RUN_GROUP", "env-group")
    start_tracking(config, run, main=True).finish()
    monkeypatch.delenv("WANDB_PROJECT")
    monkeypatch.delenv("WANDB_RUN_GROUP")
    (found,) = training_runs(str(tiny_model_dir), str(run / "adapter"))
    assert (found.project, found.group) == ("from-env", "env-group")
