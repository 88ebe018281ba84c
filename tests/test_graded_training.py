"""Graded and multiple positives in training (`data.positives_per_group`): sampling, labels, losses, the ranking
window, the config, and a run that learns the order among relevant documents."""

from __future__ import annotations

import json
import math

import pytest
import torch
from train_helpers import tiny_config, write_beir

from tuner.config import ConfigError
from tuner.data.schema import Group
from tuner.losses import listwise_loss
from tuner.train import train
from tuner.train_data import GroupCollator, _stream, sample_group
from tuner.trainer import RankingWindow

GRADED = Group(query="q", pos=["a", "b", "c"], neg=[f"n{i}" for i in range(6)], pos_grades=[1, 3, 2])


def test_one_positive_is_the_draw_it_always_was():
    """positives_per_group 1 (the default) draws from the seeded stream exactly as before: resumed runs and the
    README's figures do not move."""
    for index in range(20):
        rng = _stream(7, 2, index)
        p = rng.randrange(3)
        negs = rng.sample(range(6), 5)
        got = sample_group(GRADED, 6, 7, 2, index)
        assert got["docs"] == [GRADED.pos[p]] + [GRADED.neg[j] for j in negs]
        assert got["labels"] == [float(GRADED.pos_grades[p])] + [0.0] * 5


def test_several_positives_are_distinct_with_their_grades_first():
    seen = set()
    for index in range(30):
        got = sample_group(GRADED, 6, 1, 0, index, positives=2)
        pos, negs = got["docs"][:2], got["docs"][2:]
        assert len(set(pos)) == 2 and set(pos) <= set(GRADED.pos)
        assert len(set(negs)) == 4 and set(negs) <= set(GRADED.neg)
        assert got["labels"] == [float(GRADED.pos_grades[GRADED.pos.index(d)]) for d in pos] + [0.0] * 4
        assert got["mask"] is None
        seen.add(tuple(sorted(pos)))
    assert len(seen) == 3  # every pair of the three positives gets drawn
    # asking for more positives than a group has: all of them, and negatives fill the rest
    every = sample_group(GRADED, 6, 1, 0, 0, positives=5)
    assert sorted(every["docs"][:3]) == ["a", "b", "c"] and len(set(every["docs"][3:])) == 3


def test_short_groups_and_teacher_scores_follow_the_drawn_positives():
    group = Group(query="q", pos=["a", "b"], neg=["n"], pos_scores=[5.0, 4.0], neg_scores=[-1.0])
    got = sample_group(group, 5, 3, 0, 0, positives=3)
    assert sorted(got["docs"][:2]) == ["a", "b"] and got["docs"][2:] == ["n", "", ""]
    assert got["mask"] == [True, True, True, False, False]
    assert got["labels"] == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert got["teacher"][:2] == [{"a": 5.0, "b": 4.0}[d] for d in got["docs"][:2]]
    assert got["teacher"][2:] == [-1.0, 0.0, 0.0]


def test_collator_labels_are_the_grades(tiny_model_dir):
    from tuner.contract import PromptEncoder, load_tokenizer

    collate = GroupCollator(PromptEncoder(load_tokenizer(), max_length=128), pad_id=0)
    a = sample_group(GRADED, 4, 1, 0, 0, positives=2)
    b = sample_group(Group(query="q", pos=["p"], neg=["x", "y", "z"]), 4, 1, 0, 0, positives=2)
    labels = collate([a, b])["group_labels"]
    assert labels.tolist() == [a["labels"], [1.0, 0.0, 0.0, 0.0]]


def test_listwise_target_is_proportional_to_the_grades():
    logits = torch.tensor([[0.3, -0.2, 1.1, 0.0]])
    labels = torch.tensor([[1.0, 3.0, 0.0, 0.0]])
    logp = torch.log_softmax(logits, -1)[0]
    want = -(0.25 * logp[0] + 0.75 * logp[1])
    assert listwise_loss(logits, labels=labels).item() == pytest.approx(want.item(), abs=1e-6)
    # the loss is lowest where the softmax matches the grades: grade 3 three times as likely as grade 1
    best = torch.tensor([[0.0, math.log(3.0), -30.0, -30.0]])
    worse = torch.tensor([[math.log(3.0), 0.0, -30.0, -30.0]])
    assert listwise_loss(best, labels=labels) < listwise_loss(worse, labels=labels)


def test_ranking_window_counts_every_positive():
    window, one = RankingWindow(), RankingWindow()
    labels = torch.tensor([[3.0, 1.0, 0.0, 0.0], [2.0, 1.0, 0.0, 0.0]])
    # group 1: both positives above both negatives; group 2: its second positive is below a negative
    window.add(torch.tensor([[4.0, 2.0, 1.0, 0.0], [4.0, 0.5, 1.0, 0.0]]), labels=labels)
    got = window.summary()
    assert got["pos_top1"] == 0.5
    assert got["pos_margin"] == pytest.approx((4 + 2 + 4 + 0.5) / 4 - (1 + 0 + 1 + 0) / 4, abs=1e-4)
    # labels of one positive in column 0 are the default layout
    one.add(torch.tensor([[3.0, 1.0, 2.0]]), labels=torch.tensor([[2.0, 0.0, 0.0]]))
    default = RankingWindow()
    default.add(torch.tensor([[3.0, 1.0, 2.0]]))
    assert one.summary() == default.summary()


@pytest.mark.parametrize("value", ["0", "4"])
def test_positives_per_group_is_checked(value, tiny_model_dir, tmp_path):
    beir = write_beir(tmp_path / "beir")
    with pytest.raises(ConfigError, match=r"data\.positives_per_group"):
        tiny_config(tiny_model_dir, beir, tmp_path / "run", f"data.positives_per_group={value}")


# A task only grades can teach: each query has two relevant documents that share its words, one saying "partial",
# the other "complete"; negatives are other topics'. Which of the two is grade 3 is the test's choice.
WORDS = ["cats", "lava", "chord", "bread", "comet", "tennis", "coffee", "glacier", "bridge", "bees", "tides", "ferns"]


def _graded_rows(grades: list[int]) -> list[dict]:
    rows = []
    for i, w in enumerate(WORDS):
        others = [x for x in WORDS if x != w]
        rows.append(
            {
                "query": f"notes about {w}?",
                "pos": [f"{w} notes partial", f"{w} notes complete"],
                "pos_grades": grades,
                "neg": [f"{others[(i + k) % len(others)]} notes" for k in range(4)],
            }
        )
    return rows


def _higher_grade_first(model, rows) -> float:
    """The fraction of rows whose higher-grade positive scores above the lower-grade one."""
    from tuner.contract import load_tokenizer
    from tuner.scoring import Reranker

    reranker = Reranker(model.eval(), load_tokenizer(), max_length=96, show_progress=False)
    wins = 0
    for r in rows:
        scores = reranker.score(r["query"], r["pos"], normalize=False)
        hi = r["pos_grades"].index(max(r["pos_grades"]))
        wins += scores[hi] > scores[1 - hi]
    return wins / len(rows)


def _write(rows: list[dict], file):
    file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return file


def test_graded_positives_teach_the_order_among_relevant_documents(tiny_model_dir, tmp_path):
    """One positive per group learns relevant-above-irrelevant only: the grades change nothing in its run, so it
    ranks the two relevant documents as its initialization happens to. Two positives with graded listwise targets
    put the grade-3 document first for (nearly) every query, also where that run ranked it second."""
    beir = write_beir(tmp_path / "beir")
    common = ("eval.beir=null", "train.max_steps=30", "loss.kind=listwise")
    rows = _graded_rows([1, 3])
    one = train(
        tiny_config(tiny_model_dir, beir, tmp_path / "one", f"data.train_file={_write(rows, tmp_path / 'a')}", *common)
    )
    assert "12 of 12 groups have positives of different grades" in (tmp_path / "one/logs/train.log").read_text()
    baseline = _higher_grade_first(one["model"], rows)
    if baseline > 0.5:  # grade 3 goes to the document that run ranks second for most queries
        rows = _graded_rows([3, 1])
        baseline = _higher_grade_first(one["model"], rows)
    assert baseline <= 0.5
    file = _write(rows, tmp_path / "graded.jsonl")
    overrides = (f"data.train_file={file}", *common, "data.positives_per_group=2")
    graded = train(tiny_config(tiny_model_dir, beir, tmp_path / "two", *overrides))
    assert _higher_grade_first(graded["model"], rows) >= 11 / 12


# (sft is left out: sft_loss reads labels > 0.5 as "yes" itself, so raw grades and binary targets agree there)
@pytest.mark.parametrize("kind", ["pointwise", "listwise"])
def test_each_loss_gets_the_targets_it_understands(kind):
    """Grades are gains: listwise weighs by them; pointwise gets 1 for every positive (BCE against a target of 3
    would reward pushing the score down)."""
    from tuner.losses import pointwise_loss
    from tuner.trainer import RerankTrainer

    trainer = object.__new__(RerankTrainer)  # compute_loss alone, without a Trainer around it
    trainer.loss_kind, trainer.loss_kwargs = kind, {"pos_weight": 2.0, "temperature": 1.0}
    trainer.yes_id, trainer.no_id = 1, 2
    trainer._ranking = RankingWindow()
    torch.manual_seed(0)
    rows = torch.randn(8, 5)  # [prompts, vocab]: the yes−no logit is column 1 minus column 2
    labels = torch.tensor([[3.0, 1.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]])

    class Model(torch.nn.Module):
        def forward(self, vocab=False, **batch):
            return rows if vocab else rows[:, 1] - rows[:, 2]

    got = trainer.compute_loss(Model().eval(), {"group_labels": labels, "input_ids": torch.zeros(8, 3)})
    binary = (labels > 0).float()
    logits = (rows[:, 1] - rows[:, 2]).view(2, 4)
    want = {
        "pointwise": lambda: pointwise_loss(logits, binary, pos_weight=2.0),
        "listwise": lambda: listwise_loss(logits, 1.0, labels),
    }[kind]()
    assert got.item() == pytest.approx(want.item(), abs=1e-6)
    if kind == "pointwise":  # and not what the raw grades would give
        assert got.item() != pytest.approx(pointwise_loss(logits, labels, pos_weight=2.0).item(), abs=1e-3)


@pytest.mark.parametrize(
    ("rows", "overrides", "said"),
    [
        # grades that one positive per group cannot use
        (_graded_rows([1, 3]), (), "12 of 12 groups have positives of different grades"),
        # several positives asked for where no group has two
        (
            [{"query": f"q{i}", "pos": ["p"], "neg": ["a", "b", "c"]} for i in range(3)],
            ("data.positives_per_group=2",),
            "no group has more than one positive: it changes nothing",
        ),
        # grades under a loss that reads every positive as "yes"
        (
            _graded_rows([1, 3]),
            ("data.positives_per_group=2", "loss.kind=pointwise"),
            "loss.kind=pointwise treats every positive as 'yes': the grades of 12 groups do not steer training",
        ),
        # grades under distill without its hard-label part: the teacher's scores alone
        (
            [dict(r, pos_scores=[2.0, 1.0], neg_scores=[0.0] * 4) for r in _graded_rows([1, 3])],
            ("data.positives_per_group=2", "loss.kind=distill"),
            "loss.kind=distill with loss.hard_label_weight 0 follows the teacher's scores alone: the grades of 12",
        ),
    ],
)
def test_the_run_says_what_grades_and_several_positives_do(rows, overrides, said, tiny_model_dir, tmp_path, caplog):
    from tuner.train_setup import load_training_groups

    file = _write(rows, tmp_path / "train.jsonl")
    config_args = (f"data.train_file={file}", "data.positives_per_group=2")
    config = tiny_config(
        tiny_model_dir, write_beir(tmp_path / "beir"), tmp_path / "run", f"data.train_file={file}", *overrides
    )
    with caplog.at_level("WARNING", logger="tuner.train"):
        load_training_groups(config.data, config.loss.kind, 0, tmp_path / "run", config.loss.hard_label_weight)
    assert said in caplog.text
    # and a setting that uses the grades draws no such warning: listwise, or distill with a hard-label part
    if rows[0].get("pos_grades"):
        fixes = [("loss.kind=listwise",)] + [("loss.hard_label_weight=0.5",)] * ("loss.kind=distill" in overrides)
        for fix in fixes:
            good = tiny_config(tiny_model_dir, tmp_path / "beir", tmp_path / "run", *config_args, *overrides, *fix)
            caplog.clear()
            with caplog.at_level("WARNING", logger="tuner.train"):
                load_training_groups(good.data, good.loss.kind, 0, tmp_path / "run", good.loss.hard_label_weight)
            assert "steer" not in caplog.text, (fix, caplog.text)


def test_teacher_scores_follow_the_drawn_negatives():
    """Each slot's teacher score is the score of the document drawn into it: distillation teaches the teacher's
    order of the documents the step sees, not scores shifted onto other documents."""
    negs = [f"n{i}" for i in range(8)]
    group = Group(query="q", pos=["a", "b"], neg=negs, pos_scores=[9.0, 8.0], neg_scores=[float(i) for i in range(8)])
    score = {"a": 9.0, "b": 8.0} | {d: float(i) for i, d in enumerate(negs)}
    for index in range(10):
        got = sample_group(group, 5, 4, 1, index)
        assert got["teacher"] == [score[d] for d in got["docs"]]


def test_a_group_without_negatives_is_refused_by_the_sampler():
    """A group of positives alone would be all placeholders past its positive: a listwise loss of 0 that trains
    nothing. `tuner train` leaves such groups out; the sampler names one that gets through."""
    with pytest.raises(ValueError, match=r"group q7 has no negatives; group_size 4 needs 3"):
        sample_group(Group(query="q", pos=["p"], neg=[], qid="q7"), 4, 0, 0, 0)
    assert sample_group(Group(query="q", pos=["p"], neg=[]), 1, 0, 0, 0)["docs"] == ["p"]  # a group of one is fine


@pytest.mark.parametrize("kind", ["listwise", "distill"])
def test_the_recipes_loss_options_reach_the_loss(kind):
    """loss.temperature, loss.teacher_temperature and loss.hard_label_weight are the loss's, each in its place: a
    recipe's temperature 0.5 is not trained at 1, nor the two temperatures swapped."""
    from tuner.losses import distill_loss
    from tuner.trainer import RerankTrainer

    trainer = object.__new__(RerankTrainer)  # compute_loss alone, without a Trainer around it
    kw = {"pos_weight": 1.0, "temperature": 0.5, "teacher_temperature": 2.0, "hard_label_weight": 0.3}
    trainer.loss_kind, trainer.loss_kwargs = kind, kw
    trainer._ranking = RankingWindow()
    torch.manual_seed(0)
    logits = torch.randn(2, 4)
    labels = torch.tensor([[3.0, 1.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]])
    teacher = torch.randn(2, 4) * 3

    class Model(torch.nn.Module):
        def forward(self, **batch):
            return logits.reshape(-1)

    inputs = {"group_labels": labels, "input_ids": torch.zeros(8, 3), "teacher_scores": teacher}
    got = trainer.compute_loss(Model().eval(), inputs)
    if kind == "listwise":
        want = listwise_loss(logits, 0.5, labels)
        others = [listwise_loss(logits, 1.0, labels)]
    else:
        want = distill_loss(logits, teacher, 0.5, 2.0, 0.3, labels)
        others = [
            distill_loss(logits, teacher, 2.0, 0.5, 0.3, labels),
            distill_loss(logits, teacher, 0.5, 2.0, 0.0, labels),
            distill_loss(logits, teacher, 0.5, 2.0, 0.3, (labels > 0).float()),
        ]
    assert got.item() == pytest.approx(want.item(), abs=1e-6)
    assert all(got.item() != pytest.approx(other.item(), abs=1e-4) for other in others)  # the options tell apart
