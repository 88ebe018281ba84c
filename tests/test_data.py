"""Training-file formats, validation errors, train/dev split, atomic writes and `tuner data check`."""

from __future__ import annotations

import gzip
import json
import math
import re
from pathlib import Path

import pytest

from tuner.cli import main
from tuner.data import DataError, Group, load_groups, read_groups, split_groups, write_groups
from tuner.data.check import check_file, percentile


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


GROUPED = [
    {"query": "what is bm25", "pos": ["a ranking function"], "neg": ["a car", {"title": "T", "text": "a boat"}]},
    {
        "query": "qwen",
        "pos": [{"title": "Qwen3", "text": "a model"}],
        "neg": ["x"],
        "instruction": "find models",
        "pos_scores": [2.5],
        "neg_scores": [-1],
        "qid": 7,
    },
]


# ----------------------------------------------------------------------------------------------- formats
def test_grouped_rows_keep_documents_instructions_and_scores(tmp_path):
    groups = load_groups(_jsonl(tmp_path / "g.jsonl", GROUPED))
    assert [g.query for g in groups] == ["what is bm25", "qwen"]
    assert groups[0].neg == ["a car", {"title": "T", "text": "a boat"}]
    assert groups[0].instruction is None and groups[0].pos_scores is None
    assert groups[1].instruction == "find models"
    assert groups[1].pos_scores == [2.5] and groups[1].neg_scores == [-1.0]
    assert groups[1].qid == "7"
    # a title alone is a document (as in scoring), read as the scorer reads it
    titled = load_groups(_jsonl(tmp_path / "t.jsonl", [{"query": "q", "pos": [{"title": "Only a title"}]}]))
    assert titled[0].pos == [{"title": "Only a title", "text": ""}]


def test_labeled_pairs_are_grouped_per_query_and_instruction(tmp_path, caplog):
    rows = [
        {"query": "q1", "document": "d1", "label": 1},
        {"query": "q2", "document": "d2", "label": 0},
        {"query": "q1", "document": {"text": "d3"}, "label": 0},
        {"query": "q1", "document": "d4", "label": 2.0},  # graded: any label > 0 is a positive
        {"query": "q1", "document": "d5", "label": 1, "instruction": "other task"},
        {"query": "q3", "document": "d6", "label": True},
    ]
    result = read_groups(_jsonl(tmp_path / "p.jsonl", rows))
    assert result.rows == 6
    by_key = {(g.query, g.instruction): g for g in result.groups}
    assert list(by_key) == [("q1", None), ("q1", "other task"), ("q3", None)]  # first-appearance order
    assert by_key[("q1", None)].pos == ["d1", "d4"] and by_key[("q1", None)].neg == [{"text": "d3"}]
    assert by_key[("q1", "other task")].pos == ["d5"]
    assert result.skipped_no_positive == 1  # q2 has only a 0 label


def test_graded_labels_are_kept_through_split_and_write_and_are_the_gains_of_evaluation(tmp_path):
    """Integer labels above 1 become the positives' grades; `tuner data split`'s files keep them; evaluating the
    dev file uses them as qrels (so nDCG weighs a grade-3 document above a grade-1 one, as on a BEIR folder)."""
    from tuner.evaluate import Evaluator
    from tuner.metrics import evaluate_per_query

    rows = [
        {"query": "graded", "document": "best", "label": 3},
        {"query": "graded", "document": "ok", "label": 1},
        {"query": "graded", "document": "bad", "label": 0},
        {"query": "graded", "document": "good", "label": 2.0},
        {"query": "binary", "document": "yes", "label": 1},
        {"query": "binary", "document": "no", "label": 0},
        {"query": "soft", "document": "likely", "label": 0.8},  # fractional: no grade scale, grade 1 for metrics
        {"query": "soft", "document": "surely", "label": 2},
        {"query": "soft", "document": "never", "label": 0},
    ]
    groups = {g.query: g for g in load_groups(_jsonl(tmp_path / "p.jsonl", rows))}
    assert groups["graded"].pos == ["best", "ok", "good"] and groups["graded"].pos_grades == [3, 1, 2]
    assert groups["binary"].pos_grades is None and groups["soft"].pos_grades is None

    written = write_groups(list(groups.values()), tmp_path / "g.jsonl")
    again = {g.query: g for g in load_groups(written)}
    assert again["graded"].pos_grades == [3, 1, 2] and again["binary"].pos_grades is None
    assert "pos_grades" not in json.loads(written.read_text(encoding="utf-8").splitlines()[1])

    ev = Evaluator.from_groups(written)
    assert ev.qrels["q1"] == {"d1": 3, "d2": 1, "d3": 2}  # positives first; d4 ("bad") is judged 0: no qrel
    assert ev.qrels["q2"] == {"d5": 1} and ev.qrels["q3"] == {"d7": 1, "d8": 1}
    # graded gains: "ok" (grade 1) ranked above "best" (grade 3) costs more than under binary relevance
    ranking = {"q1": [("d2", 4.0), ("d1", 3.0), ("d3", 2.0), ("d4", 1.0)]}
    graded = evaluate_per_query(ev.qrels, ranking, ["ndcg@10"])["q1"]["ndcg@10"]
    ideal = 3 + 2 / math.log2(3) + 1 / math.log2(4)
    assert graded == pytest.approx((1 + 3 / math.log2(3) + 2 / math.log2(4)) / ideal)


def test_a_query_fed_by_pair_and_triplet_rows_gets_no_grades(tmp_path):
    """Pair labels grade only the positives they name: a query whose group triplet rows also fed has positives
    without a label, so it keeps no grades (not a grade list shorter than its positives)."""
    from tuner.data.groups import groups_as_collection

    rows = [
        {"query": "q", "document": "graded", "label": 3},
        {"query": "q", "positive": "from a triplet", "negative": "n"},
    ]
    (group,) = load_groups(_jsonl(tmp_path / "mixed.jsonl", rows))
    assert group.pos == ["graded", "from a triplet"] and group.neg == ["n"]
    assert group.pos_grades is None
    assert groups_as_collection([group]).beir.qrels == {"q1": {"d1": 1, "d2": 1}}


def test_queries_without_a_positive_are_kept_when_not_required(tmp_path):
    """Training and evaluation need a positive per query; calibration does not (a negatives-only query's pairs are
    labeled data): `require_positive=False` keeps a pair query with only 0 labels and a grouped row's empty pos."""
    rows = [
        {"query": "q1", "document": "d1", "label": 1},
        {"query": "q2", "document": "d2", "label": 0},
        {"query": "q2", "document": "d3", "label": 0},
        {"query": "q3", "pos": [], "neg": ["d4"]},
    ]
    path = _jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(DataError, match=r"p\.jsonl:4: field 'pos' is empty"):
        load_groups(path)  # unchanged by default
    result = read_groups(path, require_positive=False)
    assert [(g.query, g.pos, g.neg) for g in result.groups] == [
        ("q1", ["d1"], []),
        ("q2", [], ["d2", "d3"]),
        ("q3", [], ["d4"]),
    ]
    assert result.skipped_no_positive == 0
    assert read_groups(_jsonl(tmp_path / "q.jsonl", rows[:3])).skipped_no_positive == 1


def test_json_array_gzip_and_folder_with_split(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(GROUPED, indent=2), encoding="utf-8")
    assert [g.query for g in load_groups(tmp_path / "a.json")] == ["what is bm25", "qwen"]
    (tmp_path / "b.json").write_text(json.dumps({"data": GROUPED}), encoding="utf-8")
    assert len(load_groups(tmp_path / "b.json")) == 2
    with gzip.open(tmp_path / "c.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(json.dumps(r) for r in GROUPED))
    assert len(load_groups(tmp_path / "c.jsonl.gz")) == 2
    folder = tmp_path / "ds"
    folder.mkdir()
    _jsonl(folder / "train.jsonl", GROUPED)
    _jsonl(folder / "dev.jsonl", GROUPED[:1])
    assert len(load_groups(folder)) == 2
    assert len(load_groups(folder, split="dev")) == 1
    with pytest.raises(DataError, match=r"no test\.jsonl"):
        load_groups(folder, split="test")


def test_csv_and_tsv_files_of_labeled_pairs(tmp_path):
    """A header names the columns (any order, any case); CSV cells may be quoted across lines, TSV has no
    quoting (a document that opens with a quote stays one cell); a title column makes {title, text} documents."""
    csv_text = (
        "Label,query,document,title,note\n"
        '1,what is x,"x is a ""letter"", see\nthe next line",Letters,\n'
        "\n"
        "0,what is x,unrelated,,\n"
        "2.5,what is y,y doc,,graded\n"
    )
    (tmp_path / "p.csv").write_text(csv_text, encoding="utf-8")
    result = read_groups(tmp_path / "p.csv")
    assert result.rows == 3 and result.unknown_fields == {"note": f"{tmp_path / 'p.csv'}:2"}
    x, y = result.groups
    assert x.pos == [{"title": "Letters", "text": 'x is a "letter", see\nthe next line'}] and x.neg == ["unrelated"]
    assert (y.query, y.pos, y.neg) == ("what is y", ["y doc"], [])

    tsv_text = 'query\tdocument\tlabel\tinstruction\nq\t"Quoted," she said\t1\tfind quotes\nq\tplain\t0\tfind quotes\n'
    with gzip.open(tmp_path / "t.tsv.gz", "wt", encoding="utf-8") as f:
        f.write(tsv_text)
    (g,) = load_groups(tmp_path / "t.tsv.gz")
    assert (g.pos, g.neg, g.instruction) == (['"Quoted," she said'], ["plain"], "find quotes")

    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.csv").write_text(csv_text, encoding="utf-8")
    assert len(load_groups(folder)) == 2


def test_tsv_written_by_the_csv_module_is_unquoted_and_csv_booleans_are_labels(tmp_path):
    import csv

    with open(tmp_path / "w.tsv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")  # what pandas' to_csv(sep="\t") writes too: quotes doubled, wrapped
        writer.writerows(
            [["query", "document", "label"], ["q", 'He said "hi" loudly', "True"], ["q", "plain", "False"]]
        )
    (g,) = load_groups(tmp_path / "w.tsv")
    assert (g.pos, g.neg) == (['He said "hi" loudly'], ["plain"])
    (tmp_path / "d.csv").write_text("query,document,label,Label\nq,d,1,0\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.csv:1: the header names label more than once"):
        load_groups(tmp_path / "d.csv")
    (tmp_path / "b.csv").write_bytes(b"query,document,label\nq,d,1\nq,\xff,0\n")
    with pytest.raises(DataError, match=r"b\.csv:3: not UTF-8 text"):
        load_groups(tmp_path / "b.csv")


def test_sentence_transformers_triplets_and_n_tuples_are_grouped_per_query(tmp_path):
    """(query | anchor, positive, negative, negative_1, ...) rows, as ST's mine_hard_negatives writes them: one
    group per query, each document once (the positive repeats on every row), negatives in number order."""
    rows = [
        {"anchor": "q1", "positive": "p1", "negative_2": "n2", "negative_1": "n1"},
        {"anchor": "q1", "positive": "p1", "negative_1": "n3", "negative_2": "n1"},
        {"query": "q2", "positive": {"title": "T", "text": "p2"}, "negative": "m", "instruction": "task", "x": 1},
    ]
    result = read_groups(_jsonl(tmp_path / "t.jsonl", rows))
    assert [(g.query, g.pos, g.neg, g.instruction) for g in result.groups] == [
        ("q1", ["p1"], ["n1", "n2", "n3"], None),
        ("q2", [{"title": "T", "text": "p2"}], ["m"], "task"),
    ]
    assert result.unknown_fields == {"x": f"{tmp_path / 't.jsonl'}:3"}
    # number order, not text order: negative_10 comes after negative_2
    wide = [{"query": "q", "positive": "p", "negative_10": "n10", "negative_2": "n2", "negative": "n0"}]
    (g,) = load_groups(_jsonl(tmp_path / "w.jsonl", wide))
    assert g.neg == ["n0", "n2", "n10"]
    (tmp_path / "t.csv").write_text("query,positive,negative_1,negative_2\nq,p,n1,\nq,p,n2,n1\n", encoding="utf-8")
    (g,) = load_groups(tmp_path / "t.csv")
    assert (g.pos, g.neg) == (["p"], ["n1", "n2"])
    (tmp_path / "e.csv").write_text("query,positive\nq,\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"e\.csv:2: field 'positive' is empty text"):
        load_groups(tmp_path / "e.csv")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "h.csv",
            "q,doc,label\na,b,1\n",
            r"h\.csv:1: a CSV \(comma-separated\) training file needs a header row "
            r"naming the columns query, document, label .*this one has q, doc, label \(missing query, document\)",
        ),
        ("s.csv", "query;document;label\na;b;1\n", r"one cell split by ';'"),
        ("n.tsv", "query\tdocument\tlabel\na\tb\n", r"n\.tsv:2: 2 cells, the header names 3 columns"),
        ("l.csv", 'query,document,label\n"a\nb",c,yes\n', r"l\.csv:2: field 'label' must be a number, got 'yes'"),
        ("e.csv", "query,document,label\n,c,1\n", r"e\.csv:2: field 'query' is empty text"),
    ],
)
def test_bad_csv_and_tsv_rows_are_named(tmp_path, name, text, message):
    (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_groups(tmp_path / name)


def test_parquet_rows_are_read_and_checked(tmp_path, capfd):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    rows = [{"query": "q", "pos": ["p1"], "neg": ["n1", "n2"]}, {"query": "r", "pos": ["p2"], "neg": []}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "g.parquet")
    groups = load_groups(tmp_path / "g.parquet")
    assert [(g.query, g.pos, g.neg) for g in groups] == [("q", ["p1"], ["n1", "n2"]), ("r", ["p2"], [])]
    bad = [{"query": "q", "pos": [], "neg": ["n"]}]
    pq.write_table(pa.Table.from_pylist(bad), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad\.parquet: row 1: field 'pos' is empty"):
        load_groups(tmp_path / "bad.parquet")
    # an empty file has no rows, and a file that is not Parquet is named as such, each in one line (through
    # `datasets`, an empty file was "An error occurred while generating the dataset", after its own log lines)
    pq.write_table(pa.Table.from_pylist(rows).slice(0, 0), tmp_path / "empty.parquet")
    capfd.readouterr()
    with pytest.raises(DataError, match=r"empty\.parquet: no rows$"):
        load_groups(tmp_path / "empty.parquet")
    (tmp_path / "text.parquet").write_text("query,document,label\n")
    with pytest.raises(DataError, match=r"text\.parquet: cannot read as Parquet \(ArrowInvalid: "):
        load_groups(tmp_path / "text.parquet")
    assert capfd.readouterr().err == ""


def test_a_hub_dataset_id_on_a_machine_without_network_is_one_error_at_once(monkeypatch, tmp_path):
    # datasets retried for about 25 s (and printed huggingface_hub's own line) before "Couldn't reach ... on the Hub";
    # one request without retries answers, and a mistyped local folder (read as a hub id) is told to be one
    import datasets
    import huggingface_hub
    from huggingface_hub import constants

    asked = []

    def no_network(url, retry_on_errors=True, **kwargs):
        asked.append((url, retry_on_errors))
        raise ConnectionError("[Errno -2] Name or service not known")

    def never(*args, **kwargs):
        raise AssertionError("datasets was asked after the hub could not be reached")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", no_network)
    monkeypatch.setattr(datasets, "load_dataset", never)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(DataError) as err:
        load_groups("dd/good")
    assert str(err.value) == (
        "dd/good: not a local file or folder, and the Hugging Face Hub could not be reached to look it up as a "
        "dataset (ConnectionError: [Errno -2] Name or service not known); check the network (or HF_ENDPOINT), or "
        "give a local path"
    )
    assert [retry for _, retry in asked] == [False] and "/datasets/dd/good/" in asked[0][0]
    # a dataset already in the hub cache is left to datasets, which reads it from there without the network
    (tmp_path / "hub" / "datasets--dd--good").mkdir(parents=True)
    with pytest.raises(DataError, match="datasets was asked"):
        load_groups("dd/good")
    assert len(asked) == 1


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "nt.jsonl",
            '{"query": "q", "answer": "p", "negative_1": "n1", "negative_2": "n2"}\n',
            r"nt\.jsonl:1: missing field 'positive' \(a sentence-transformers triplet / n-tuple row.*; "
            r"is 'answer' it\? rename that column to 'positive'",
        ),
        (
            "a.jsonl",
            '{"anchor": "q", "answer": "p", "negative": "n"}\n',
            r"a\.jsonl:1: missing field 'positive' .*is 'answer' it\?",
        ),
        (
            "lp.jsonl",
            '{"query": "q", "answer": "p", "label": 1}\n',
            r"lp\.jsonl:1: missing field 'document'; is 'answer' it\?",
        ),
        (
            "sc.jsonl",
            '{"query": "q", "document": "p", "score": 0.7}\n{"query": "q", "document": "p", "label": 1}\n',
            r"sc\.jsonl:1: missing field 'label'; its 'score' .*output_scores=True\) is the miner's similarity",
        ),
        ("nt.csv", "query,answer,negative_1\nq,p,n\n", r"nt\.csv:1: .*\(missing positive\); is 'answer' it\?"),
        ("lp.csv", "question,answer,label\nq,p,1\n", r"lp\.csv:1: .*\(missing query, document\)$"),
        ("sc.csv", "query,document,score\nq,p,0.5\n", r"sc\.csv:1: .*\(missing label\); its 'score' .*similarity"),
    ],
)
def test_mined_rows_under_the_dataset_own_column_names_name_the_column_to_rename(tmp_path, name, text, message):
    """sentence-transformers' mine_hard_negatives keeps the input's column names (query, answer, negative_1, ...):
    such rows said "missing field 'pos'" and "'negative_1' is not read; did you mean 'negative'?" (found by walk8)."""
    (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_groups(tmp_path / name)
    if name.startswith("nt.jsonl"):  # its negatives are not "not read; did you mean 'negative'?"
        assert set(read_groups(tmp_path / name, collect_errors=True).unknown_fields) == {"answer"}


def test_sentence_transformers_reranking_evaluator_samples_are_groups(tmp_path):
    """CrossEncoderRerankingEvaluator's samples: `positive` a list, with `negative` a list or `documents` (the
    candidates, positives among them). They were refused ("field 'positive' must be a string ..., got list")."""
    rows = [
        {"query": "q", "positive": ["p1", "p2"], "documents": ["n1", "p2", "n2", "p1"]},
        {"query": "r", "positive": ["p"], "negative": ["m1", "m2"], "x": 1},
        {"query": "s", "positive": "p", "negative": ["k"]},
    ]
    result = read_groups(_jsonl(tmp_path / "e.jsonl", rows))
    assert [(g.query, g.pos, g.neg) for g in result.groups] == [
        ("q", ["p1", "p2"], ["n1", "n2"]),
        ("r", ["p"], ["m1", "m2"]),
        ("s", ["p"], ["k"]),
    ]
    assert result.unknown_fields == {"x": f"{tmp_path / 'e.jsonl'}:2"}
    with pytest.raises(DataError, match=r"b\.jsonl:1: field 'positive' is an empty list"):
        load_groups(_jsonl(tmp_path / "b.jsonl", [{"query": "q", "positive": [], "documents": ["a"]}]))
    with pytest.raises(DataError, match=r"c\.jsonl:1: field 'documents\[1\]' is empty text"):
        load_groups(_jsonl(tmp_path / "c.jsonl", [{"query": "q", "positive": ["a"], "documents": ["a", " "]}]))


def test_sentence_transformers_listwise_rows_are_labeled_pairs(tmp_path):
    """{"query", "docs" | "documents", "labels"} (ST's listwise layout, CrossEncoder ListNet/LambdaLoss data): each
    label is a pair's label; it was refused ("missing field 'pos'") (found by walk8)."""
    rows = [
        {"query": "q", "docs": ["a", "b", {"title": "T", "text": "c"}], "labels": [1, 0, 3]},
        {"query": "q", "documents": ["d", "g"], "labels": [0, 1.0], "x": 1},
        {"query": "r", "docs": ["e", "f"], "labels": [True, False], "instruction": "task"},
    ]
    result = read_groups(_jsonl(tmp_path / "l.jsonl", rows))
    assert [(g.query, g.pos, g.neg, g.instruction, g.pos_grades) for g in result.groups] == [
        ("q", ["a", {"title": "T", "text": "c"}, "g"], ["b", "d"], None, [1, 3, 1]),
        ("r", ["e"], ["f"], "task", None),
    ]
    assert result.unknown_fields == {"x": f"{tmp_path / 'l.jsonl'}:2"}
    # mine_hard_negatives(output_format="labeled-list") under the dataset's own column name
    mined = _jsonl(tmp_path / "m.jsonl", [{"query": "q", "answer": ["a", "b"], "labels": [1, 0]}])
    with pytest.raises(DataError, match=r"m\.jsonl:1: missing field 'docs' \(a sentence-transformers listwise row.*"):
        load_groups(mined)
    assert set(read_groups(mined, collect_errors=True).unknown_fields) == {"answer"}  # not 'labels'
    renamed = _jsonl(tmp_path / "p.jsonl", [{"query": "q", "positive": ["a", "b"], "labels": [1, 0]}])
    with pytest.raises(DataError, match=r"p\.jsonl:1: field 'positive' holds a list .*rename that column to 'docs'"):
        load_groups(renamed)
    for bad, message in [
        (
            {"query": "q", "docs": ["a", "b"], "labels": [1]},
            r"'labels' must be a list of one label per document \(2\), got 1",
        ),
        ({"query": "q", "docs": [], "labels": []}, r"'docs' must be a non-empty list"),
        ({"query": "q", "docs": ["a", ""], "labels": [1, 0]}, r"'docs\[1\]' is empty text"),
        ({"query": "q", "docs": ["a"], "labels": ["yes"]}, r"'labels\[0\]' must be a number"),
    ]:
        with pytest.raises(DataError, match=r"b\.jsonl:1: field " + message):
            load_groups(_jsonl(tmp_path / "b.jsonl", [bad]))


def test_a_csv_cell_holding_a_written_list_is_refused(tmp_path):
    """`to_csv` of a list column (ST's labeled-list output) writes str(list): it was read as one document, the whole
    list, with no error (found by walk8). A document that merely has brackets is still a document."""
    (tmp_path / "l.csv").write_text(
        'query,positive,negative\nq,"[\'a b\', ""c\'s""]",n\nr,[see above],[1]\n', encoding="utf-8"
    )
    with pytest.raises(DataError, match=r"l\.csv:2: column 'positive' holds a Python list written as text"):
        load_groups(tmp_path / "l.csv")
    result = read_groups(tmp_path / "l.csv", collect_errors=True)
    assert [(g.query, g.pos, g.neg) for g in result.groups] == [("r", ["[see above]"], ["[1]"])]


def test_a_folder_saved_with_datasets_save_to_disk_is_read(tmp_path):
    """`Dataset.save_to_disk` (what an ST user keeps mine_hard_negatives' output as) and a `DatasetDict`'s folder
    at its split: they were refused as folders without a train.jsonl, or taken for hub ids."""
    datasets = pytest.importorskip("datasets")
    rows = {"query": ["q", "q"], "positive": ["p", "p"], "negative_1": ["n1", "n2"]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "mined"))
    (g,) = load_groups(tmp_path / "mined")
    assert (g.query, g.pos, g.neg) == ("q", ["p"], ["n1", "n2"])
    dev = datasets.Dataset.from_dict({"query": ["r"], "document": ["d"], "label": [1]})
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows), "dev": dev}).save_to_disk(str(tmp_path / "dd"))
    assert [g.query for g in load_groups(tmp_path / "dd")] == ["q"]
    assert [g.query for g in load_groups(tmp_path / "dd", split="dev")] == ["r"]
    with pytest.raises(DataError, match=r"dd: a saved DatasetDict .* without a 'test' split; it has dev, train"):
        load_groups(tmp_path / "dd", split="test")
    datasets.Dataset.from_dict({"query": ["q"], "pos": [[]]}).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(DataError, match=r"bad: row 1: field 'pos' is empty"):
        load_groups(tmp_path / "bad")


def test_a_local_copy_of_a_hub_dataset_is_read_at_its_split(tmp_path):
    """A hub dataset repository's files (git clone, snapshot_download: data/<split>-NNNNN-of-NNNNN.parquet), with
    splits of different columns; it was refused as a folder without a train.jsonl (found by walk8)."""
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    (tmp_path / "repo" / "data").mkdir(parents=True)
    train = [{"query": "q", "positive": "p", "negative_1": "n"}]
    pq.write_table(pa.Table.from_pylist(train), tmp_path / "repo" / "data" / "train-00000-of-00001.parquet")
    test = [{"query": "r", "document": "d", "label": 1}, {"query": "r", "document": "e", "label": 0}]
    pq.write_table(pa.Table.from_pylist(test), tmp_path / "repo" / "data" / "test-00000-of-00001.parquet")
    assert [(g.query, g.pos, g.neg) for g in load_groups(tmp_path / "repo")] == [("q", ["p"], ["n"])]
    assert [(g.query, g.pos, g.neg) for g in load_groups(tmp_path / "repo", "test")] == [("r", ["d"], ["e"])]
    # a split it does not have: its splits are named (it said only "no dev.jsonl, ... in this folder"); a file
    # that holds no rows (a README beside them) is no split
    (tmp_path / "repo" / "data" / "README.md").write_text("notes", encoding="utf-8")
    with pytest.raises(DataError, match=r"repo: no dev\.jsonl.*; its data/ has the splits test, train \(pick one"):
        load_groups(tmp_path / "repo", "dev")


def test_an_unreachable_hub_id_is_a_data_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="someuser/somedata: cannot load"):
        load_groups("someuser/somedata")


def test_a_beir_folder_or_missing_file_is_named(tmp_path):
    (tmp_path / "corpus.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(DataError, match=r"a BEIR folder, not a file of training rows: evaluate on it with --beir"):
        load_groups(tmp_path)
    with pytest.raises(DataError, match="no such file"):
        load_groups(tmp_path / "nope.jsonl")
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "dev.jsonl").write_text('{"query": "q", "pos": ["p"]}\n', encoding="utf-8")
    (splits / "notes.txt").write_text("", encoding="utf-8")
    with pytest.raises(
        DataError, match=r"no test\.jsonl, .* in this folder; it has dev\.jsonl \(pick one with the split"
    ):
        load_groups(splits, "test")


def test_a_mistyped_local_path_is_not_asked_of_the_hub(tmp_path, monkeypatch):
    """ "data/trian" where ./data is a folder reads as a local path (no half-minute of hub retries), and the error
    offers the files it resembles; "someuser/somedata" with no ./someuser folder still means the hub."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"query": "q", "pos": ["p"], "neg": ["n"]}\n', encoding="utf-8")

    def no_hub(*args, **kwargs):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr("datasets.load_dataset", no_hub)
    for typo in ("data/trian", "data/train.jsnol"):
        with pytest.raises(
            DataError, match=f"{typo}: no such file; did you mean data/train.jsonl\\? \\(read as a local"
        ):
            load_groups(typo)
    with pytest.raises(
        DataError,
        match=r"^data/zzz: no such file \(read as a local path, not a hub dataset id, because data/ is a folder",
    ):
        load_groups("data/zzz")
    with pytest.raises(DataError, match=r"^train: no such file; did you mean train\.jsonl\?$"):
        (tmp_path / "train.jsonl").write_text("", encoding="utf-8")
        load_groups("train")  # a file name without its suffix
    with pytest.raises(DataError, match=r"someuser/somedata: cannot load \(AssertionError: the hub was asked\)"):
        load_groups("someuser/somedata")


# ------------------------------------------------------------------------------------------- bad inputs
GOOD = '{"query": "q", "pos": ["p"], "neg": ["n"]}\n'
# case → (the bad line, placed on line 2; the message expected after "<file>:2: ")
BAD_CASES = {
    "malformed JSON": (b'{"query": "q", "pos": ["p"]', "invalid JSON"),
    "missing query": (b'{"pos": ["p"], "neg": ["n"]}', "missing field 'query'"),
    "missing pos": (b'{"query": "q", "neg": ["n"]}', "missing field 'pos'"),
    "missing label": (b'{"query": "q", "document": "d"}', "missing field 'label'"),
    "wrong type pos": (b'{"query": "q", "pos": "p"}', "field 'pos' must be a list of documents, got str"),
    "wrong type query": (b'{"query": 3, "pos": ["p"]}', "field 'query' must be a string, got int"),
    "wrong type doc": (b'{"query": "q", "pos": [5]}', "field 'pos[0]' must be a string or a {title, text} object"),
    "row not object": (b'["q", "p"]', "a row must be a JSON object, got list"),
    "empty pos": (b'{"query": "q", "pos": [], "neg": ["n"]}', "field 'pos' is empty"),
    "empty query": (b'{"query": "  ", "pos": ["p"]}', "field 'query' is empty text"),
    "empty neg text": (b'{"query": "q", "pos": ["p"], "neg": ["n", ""]}', "field 'neg[1]' is empty text"),
    "empty doc object": (b'{"query": "q", "pos": [{"title": "", "text": ""}]}', "field 'pos[0]' is empty text"),
    "doc text not a string": (
        b'{"query": "q", "pos": [{"title": "T", "text": 0}]}',
        "field 'pos[0].text' must be a string, got int",
    ),
    "doc title not a string": (
        b'{"query": "q", "pos": [{"title": 5, "text": "p"}]}',
        "field 'pos[0].title' must be a string, got int",
    ),
    "doc object of another schema": (
        b'{"query": "q", "pos": [{"body": "p"}]}',
        "field 'pos[0]' is an object without 'text' (or 'title'): keys 'body'",
    ),
    "non-UTF-8": (b'{"query": "caf\xe9", "pos": ["p"]}', "not UTF-8"),
    "score length": (
        b'{"query": "q", "pos": ["p"], "neg": ["n", "m"], "neg_scores": [0.1]}',
        "field 'neg_scores' has 1 scores for 2 documents in 'neg'",
    ),
    "score type": (b'{"query": "q", "pos": ["p"], "pos_scores": ["high"]}', "field 'pos_scores[0]' must be a"),
    "grade length": (b'{"query": "q", "pos": ["p", "r"], "pos_grades": [2]}', "field 'pos_grades' has 1 grades"),
    "grade zero": (b'{"query": "q", "pos": ["p"], "pos_grades": [0]}', "field 'pos_grades[0]' must be an integer >= 1"),
    "grade fraction": (b'{"query": "q", "pos": ["p"], "pos_grades": [1.5]}', "field 'pos_grades[0]' must be an"),
    "grade text": (b'{"query": "q", "pos": ["p"], "pos_grades": ["3"]}', "field 'pos_grades[0]' must be a finite"),
    "grade type": (b'{"query": "q", "pos": ["p"], "pos_grades": 3}', "field 'pos_grades' must be a list of numbers"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_row_names_file_line_and_field(tmp_path, case, capsys):
    content, message = BAD_CASES[case]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(GOOD.encode() + content + b"\n" + GOOD.encode())
    expected = f"{path}:2: {message}"
    with pytest.raises(DataError) as err:
        load_groups(path)
    assert str(err.value).startswith(expected)
    # the check goes on past the bad line, reports it and exits non-zero
    assert main(["data", "check", str(path), "--no-tokens"]) == 1
    out = capsys.readouterr().out
    assert f"error: {expected}" in out
    # the bad row is counted as read and rejected (a summary of "rows: 3, empty texts: 1" read as 3 usable rows)
    assert "rows: 3 (1 rejected, see the error below)    groups: 2" in out
    assert "FAILED: 1 error, " in out
    assert "empty texts" not in out or "empty texts (rejected rows): 1" in out


def test_an_unread_field_is_compared_with_the_fields_of_its_row_shape(tmp_path, capsys):
    """A triplet row's 'scores' (ST's output_scores=True) was met with "did you mean 'pos_scores'?", a field only
    grouped rows have (found by walk8); a grouped row's typo still gets its hint."""
    rows = [
        {"query": "q", "positive": "a", "negative": "b", "scores": [0.9, 0.1]},
        {"query": "r", "pos": ["c"], "negs": ["d"]},
        {"query": "s", "positive": "e", "negativ": "f"},
    ]
    assert main(["data", "check", str(_jsonl(tmp_path / "s.jsonl", rows)), "--no-tokens"]) == 0
    out = capsys.readouterr().out
    assert "s.jsonl:1: field 'scores' is not read by tuner (first row that has it)\n" in out
    assert "s.jsonl:2: field 'negs' is not read by tuner (first row that has it); did you mean 'neg'?" in out
    assert "s.jsonl:3: field 'negativ' is not read by tuner (first row that has it); did you mean 'negative'?" in out


def test_check_counts_the_rejected_rows_of_a_parquet_file(tmp_path, capsys):
    """Rows of a Parquet file (or a saved or hub dataset) are named 'FILE: row N': each is a rejected row of its own
    (every error was counted as one row: 'rows: 3 (1 rejected...' over 2 errors)."""
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    rows = [{"query": "q", "pos": []}, {"query": "r", "pos": ["p"]}, {"query": "s", "pos": []}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "g.parquet")
    assert main(["data", "check", str(tmp_path / "g.parquet"), "--no-tokens"]) == 1
    out = capsys.readouterr().out
    assert "rows: 3 (2 rejected, see the errors below)" in out
    assert "FAILED: 2 errors" in out


def test_check_collects_every_bad_row(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"{oops\n" + GOOD.encode() + b'{"query": "q", "pos": []}\n')
    report = check_file(path, tokens=False)
    assert not report.ok and report.rows == 3 and report.groups == 1
    assert [e.split(": ")[0] for e in report.errors] == [f"{path}:1", f"{path}:3"]


def test_unreadable_input_exits_2(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "missing.jsonl")]) == 2
    assert capsys.readouterr().err.startswith(f"tuner data check: error: {tmp_path / 'missing.jsonl'}: no such file")
    (tmp_path / "arr.json").write_text('[{"query": "q",', encoding="utf-8")
    assert main(["data", "check", str(tmp_path / "arr.json"), "--no-tokens"]) == 2
    assert "arr.json:1: invalid JSON" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- check
def test_check_counts_duplicates_conflicts_and_missing_negatives(tmp_path):
    rows = [
        {"query": "q", "pos": ["a"], "neg": ["b", "c"]},
        {"query": "q", "pos": ["b"], "neg": ["d"]},  # same query: b is positive here, negative above
        {"query": "r", "pos": ["a", "e"]},
    ]
    report = check_file(_jsonl(tmp_path / "g.jsonl", rows), tokens=False)
    s = report.stats
    assert report.ok
    assert s["queries"] == 2 and s["duplicate_queries"] == 1 and s["pos_neg_conflicts"] == 1
    assert s["groups_without_negatives"] == 1
    assert s["pos_per_query"] == {"min": 1, "p50": 1, "p95": 2, "max": 2}
    assert s["neg_per_query"] == {"min": 0, "p50": 1, "p95": 2, "max": 2}
    assert s["repeated_in_group"] == 0 and s["negatives_left_out"] == 1
    assert len(report.warnings) == 3
    # one of each, in the singular ("1 groups repeat ...")
    assert report.warnings[0].startswith("1 group repeats an earlier group's query")
    assert report.warnings[0].endswith("if they are one query's documents, merge them into one group")
    assert report.warnings[1].startswith("1 document is both positive and negative for its query")
    assert report.warnings[1].endswith("training leaves such negatives out")
    assert report.warnings[2].startswith("1 group has no negatives")
    rows = [{"query": "q", "pos": ["a", {"title": "", "text": "a "}], "neg": ["b", "c", "b"]}]
    report = check_file(_jsonl(tmp_path / "r.jsonl", rows), tokens=False)
    assert report.stats["repeated_in_group"] == 2 and report.stats["pos_neg_conflicts"] == 0
    assert report.warnings == ["2 documents repeat an earlier document of its group; training keeps one copy"]
    # one document, negative in two groups of its query: one conflict, two copies that training leaves out
    rows = [{"query": "q", "pos": ["a"], "neg": ["b"]}, {"query": "q", "pos": ["b"], "neg": ["c"]},
            {"query": "q", "pos": ["d"], "neg": ["b"]}]  # fmt: skip
    report = check_file(_jsonl(tmp_path / "c.jsonl", rows), tokens=False)
    assert report.stats["pos_neg_conflicts"] == 1 and report.stats["negatives_left_out"] == 2
    from tuner.data.check import format_report

    assert "documents both positive and negative: 1 (negative copies training leaves out: 2)" in format_report(report)


def test_check_counts_a_query_under_two_instructions_as_two_queries(tmp_path):
    """A duplicate is the same query with the same instruction: one query asked under two instructions is two
    training queries, not a repeat to warn about."""
    rows = [
        {"query": "q", "pos": ["a"], "neg": ["b"], "instruction": "Find papers"},
        {"query": "q", "pos": ["c"], "neg": ["d"], "instruction": "Find claims"},
        {"query": "q", "pos": ["e"], "neg": ["f"], "instruction": "Find claims"},  # this one repeats
    ]
    report = check_file(_jsonl(tmp_path / "i.jsonl", rows), tokens=False)
    s = report.stats
    assert (s["queries"], s["duplicate_queries"], s["instructions"]) == (2, 1, 2)
    assert len(report.warnings) == 1
    assert report.warnings[0].startswith("1 group repeats an earlier group's query (same query and instruction)")


def test_check_without_tokens_measures_none_and_counts_empty_texts(tmp_path):
    """`tokens=False` (`data check --no-tokens`) loads no tokenizer and reports no token figures; rows rejected for
    an empty text are counted and printed."""
    from tuner.data.check import format_report

    rows = [{"query": "q", "pos": ["a"], "neg": ["b"]}, {"query": "r", "pos": ["  "], "neg": ["c"]}]
    report = check_file(_jsonl(tmp_path / "e.jsonl", rows), tokens=False)
    assert not report.ok and report.stats["empty_texts"] == 1
    assert not {"prompt_tokens", "query_tokens", "truncated", "pairs"} & set(report.stats)
    text = format_report(report)
    assert "empty texts (rejected rows): 1" in text and "prompt tokens" not in text


def test_check_warns_when_documents_will_be_truncated(tmp_path, tokenizer):
    rows = [{"query": "q", "pos": ["a short positive"], "neg": ["word " * 300]}]
    path = _jsonl(tmp_path / "t.jsonl", rows)
    report = check_file(path, max_length=200, tokenizer=tokenizer)
    assert report.ok and report.stats["truncated"] == 1
    assert report.warnings == ["1 of 2 pairs are longer than 200 tokens; their documents will be cut"]
    from tuner.data.check import format_report

    assert "  truncated at max_length 200: 1 pair (50.0%)\n" in format_report(report)  # not "1 pairs"
    assert check_file(path, max_length=100_000, tokenizer=tokenizer).warnings == []


def test_check_beir_counts_grade_0_as_not_relevant_and_warns_about_empty_documents(tmp_path):
    """A BEIR folder's check: a query judged only 0 has no relevant document; a corpus document with no title and
    no text is warned about."""
    from mini_beir import DOCS, QRELS, QUERIES, write_beir

    from tuner.data.check import check_beir

    folder = write_beir(
        tmp_path / "b", corpus={**DOCS, "d9": ("", " ")}, queries=QUERIES, qrels={**QRELS, "q6": {"d3": 0}}
    )
    report = check_beir(folder, "test")
    s = report.stats
    assert report.ok and s["queries_without_positive"] == 1 and s["empty_documents"] == 1
    assert s["pos_per_query"]["max"] == 1  # q2 and q4 have a grade-0 document besides their relevant one
    # one of each, said in the singular, and what a query without a relevant document does to the figures
    assert report.warnings == [
        "1 corpus document has no title and no text",
        "1 query has no relevant document (no grade above 0): evaluation counts it as 0 on every metric for "
        "every system, and mining makes no group for it",
    ]


# ---------------------------------------------------------------------------------- consistent groups
def test_consistent_groups_drop_negatives_that_are_positives_and_repeats_keeping_grades_and_scores():
    from tuner.data.groups import consistent_groups

    groups = [
        Group("q", pos=["a", "b", "a "], neg=["c", "b", "d", "c"], pos_scores=[1.0, 2.0, 3.0],
              neg_scores=[4.0, 5.0, 6.0, 7.0], pos_grades=[1, 2, 3]),
        Group("q", pos=["d"], neg=["a", "e"], neg_scores=[8.0, 9.0]),  # same query: a and d are its positives
        Group("q", pos=["x"], neg=["a"], instruction="other task"),  # another instruction: another query
        Group("r", pos=["c"], neg=["a", "b"]),  # clean
    ]  # fmt: skip
    out, cleaned = consistent_groups(groups)
    first, second, third, fourth = out
    # "a " reads as "a": one positive, at the higher grade and the first copy's teacher score
    assert first.pos == ["a", "b"] and first.pos_grades == [3, 2] and first.pos_scores == [1.0, 2.0]
    # b and d are positives of q (d in the second group); the repeated c keeps its first place and score
    assert first.neg == ["c"] and first.neg_scores == [4.0]
    assert second.neg == ["e"] and second.neg_scores == [9.0] and second.pos == ["d"]
    assert third is groups[2] and fourth is groups[3]  # nothing to drop: the very same objects
    assert (cleaned.conflicts, cleaned.repeats, cleaned.groups_changed) == (3, 2, 2)
    assert cleaned.example == "query 'q': 'b'"
    assert groups[0].pos == ["a", "b", "a "] and groups[0].neg == ["c", "b", "d", "c"]  # inputs are not changed
    assert consistent_groups(out)[1] == consistent_groups([])[1]  # a second pass finds nothing


def test_token_stats_match_the_prompt_encoder_and_count_truncation(tmp_path, tokenizer):
    from tuner.contract import PromptEncoder

    long_doc = "word " * 300
    rows = [{"query": "short query", "pos": ["a short positive"], "neg": [long_doc], "instruction": "Find it"}]
    path = _jsonl(tmp_path / "g.jsonl", rows)
    encoder = PromptEncoder(tokenizer, max_length=100_000)
    lengths = sorted(len(encoder.encode("short query", d, "Find it")) for d in ("a short positive", long_doc))
    report = check_file(path, max_length=lengths[0] + 1, tokenizer=tokenizer)
    s = report.stats
    assert s["pairs"] == 2 and s["prompt_tokens"]["max"] == lengths[1] and s["prompt_tokens"]["min"] == lengths[0]
    assert s["query_tokens"]["max"] == len(tokenizer("short query", add_special_tokens=False)["input_ids"])
    assert s["truncated"] == 1
    assert check_file(path, max_length=lengths[1], tokenizer=tokenizer).stats["truncated"] == 0


def test_token_stats_tokenize_in_chunks_with_the_same_figures(tmp_path, tokenizer, monkeypatch, capsys):
    """A large file's prompts are never all held at once (20k groups of 8 took 5.6 GB in one call)."""
    from tuner.contract import PromptEncoder
    from tuner.data import check

    rows = [{"query": f"query {i}", "pos": [f"positive {i} " * (i % 7 + 1)], "neg": [f"n{i}", "x"]} for i in range(9)]
    path = _jsonl(tmp_path / "g.jsonl", rows)
    whole = check_file(path, max_length=12, tokenizer=tokenizer).stats
    sizes = []
    encode_many = PromptEncoder.encode_many
    monkeypatch.setattr(
        PromptEncoder, "encode_many", lambda self, t, *a, **k: sizes.append(len(t)) or encode_many(self, t, *a, **k)
    )
    monkeypatch.setattr(check, "TOKEN_CHUNK", 4)
    chunked = check_file(path, max_length=12, tokenizer=tokenizer).stats
    assert sizes == [4, 4, 4, 4, 4, 4, 3] and chunked == whole and whole["pairs"] == 27
    # with enough chunks to take a while, a progress bar counts the pairs (on stderr)
    shown = check_file(path, max_length=12, tokenizer=tokenizer, show_progress=True).stats
    err = capsys.readouterr().err
    assert shown == whole and "counting tokens" in err and "27/27" in err


def test_check_warns_about_unknown_fields(tmp_path):
    rows = [{"query": "q", "pos": ["a"], "negs": ["b"]}, {"query": "r", "document": "d", "label": 1, "score": 3}]
    report = check_file(_jsonl(tmp_path / "g.jsonl", rows), tokens=False)
    assert report.ok
    assert (
        f"{tmp_path / 'g.jsonl'}:1: field 'negs' is not read by tuner (first row that has it); did you mean 'neg'?"
        in report.warnings
    )
    score = [w for w in report.warnings if w.startswith(f"{tmp_path / 'g.jsonl'}:2: field 'score'")]
    assert len(score) == 1 and "did you mean" not in score[0]  # nothing close to suggest


def test_percentile_is_nearest_rank():
    assert percentile([5, 1, 3, 2, 4], 50) == 3
    assert percentile(list(range(1, 101)), 95) == 95
    assert percentile([7], 95) == 7


# ----------------------------------------------------------------------------------------- split, write
def _groups(n: int) -> list[Group]:
    return [Group(query=f"q{i}", pos=[f"p{i}"], neg=[f"n{i}"]) for i in range(n)]


def test_split_is_by_query_seeded_and_keeps_order():
    groups = [*_groups(50), Group(query="q3", pos=["again"])]  # q3 twice: both copies on one side
    train, dev = split_groups(groups, 0.2, seed=1)
    assert len({g.query for g in dev}) == 10
    assert not {g.query for g in train} & {g.query for g in dev}
    assert len(train) + len(dev) == 51
    assert [g.query for g in train] == [g.query for g in groups if g in train]  # input order kept
    assert split_groups(groups, 0.2, seed=1) == (train, dev)
    assert split_groups(groups, 0.2, seed=2)[1] != dev
    assert len(split_groups(_groups(5), 0.01, 0)[1]) == 1  # a positive fraction gives at least one query
    with pytest.raises(ValueError, match="dev_fraction"):
        split_groups(groups, 1.0)


def test_split_of_two_queries_gives_each_side_one():
    """A positive fraction gives dev at least one query once there are two, and train always keeps one."""
    for fraction in (0.01, 0.5, 0.99):
        train, dev = split_groups(_groups(2), fraction, seed=0)
        assert (len(train), len(dev)) == (1, 1), fraction


def test_split_does_not_depend_on_the_input_order():
    groups = _groups(30)
    _, dev = split_groups(groups, 0.3, seed=5)
    _, dev_reversed = split_groups(groups[::-1], 0.3, seed=5)
    assert {g.query for g in dev_reversed} == {g.query for g in dev}


def test_write_groups_round_trips_and_is_atomic(tmp_path):
    groups = load_groups(_jsonl(tmp_path / "in.jsonl", GROUPED))
    out = tmp_path / "out" / "g.jsonl"
    write_groups(groups, out)
    assert load_groups(out) == groups
    before = out.read_bytes()

    def failing():
        yield groups[0]
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_groups(failing(), out)
    assert out.read_bytes() == before  # the old file survives a failed write
    assert [p.name for p in out.parent.iterdir()] == ["g.jsonl"]  # no temp file left behind


def test_cli_data_split(tmp_path, capsys):
    src = tmp_path / "all.jsonl"
    write_groups(_groups(20), src)
    rc = main(["data", "split", str(src), "--dev-fraction", "0.25", "--seed", "3",
               "--train-out", str(tmp_path / "train.jsonl"), "--dev-out", str(tmp_path / "dev.jsonl")])  # fmt: skip
    assert rc == 0
    train, dev = load_groups(tmp_path / "train.jsonl"), load_groups(tmp_path / "dev.jsonl")
    assert (len(train), len(dev)) == (15, 5)
    assert (train, dev) == split_groups(_groups(20), 0.25, 3)
    assert "also a train positive" not in capsys.readouterr().out  # every positive is its query's own

    # queries apart, documents not: dev queries whose positive is also a train positive are counted
    shared = [
        Group(query=f"q{i}", pos=["THE shared  abstract" if i % 2 else f"p{i}"], neg=[f"n{i}"]) for i in range(20)
    ]
    write_groups(shared, src)
    rc = main(["data", "split", str(src), "--dev-fraction", "0.25", "--seed", "3",
               "--train-out", str(tmp_path / "train.jsonl"), "--dev-out", str(tmp_path / "dev.jsonl")])  # fmt: skip
    dev = load_groups(tmp_path / "dev.jsonl")
    odd = sum(1 for g in dev if int(g.query[1:]) % 2)
    assert rc == 0 and 0 < odd < len(dev)
    out = capsys.readouterr().out
    assert f"dev: {odd} of {len(dev)} queries have a positive that is also a train positive" in out


def test_cli_data_split_refuses_what_would_write_a_useless_or_half_split(tmp_path, capsys):
    """One query (an empty dev side), a folder as an output (the train side was written first), a fraction out of
    range: one line naming the flag or file, and nothing is written."""
    one = tmp_path / "one.jsonl"
    write_groups(_groups(1), one)
    (tmp_path / "adir.jsonl").mkdir()
    outs = ["--train-out", str(tmp_path / "tr.jsonl"), "--dev-out", str(tmp_path / "dev.jsonl")]
    cases = [
        ([str(one), *outs], "1 distinct query; a split needs two or more"),
        ([str(one), "--train-out", str(tmp_path / "tr.jsonl"), "--dev-out", str(tmp_path / "adir.jsonl")],
         "--dev-out " + str(tmp_path / "adir.jsonl") + " is a folder"),
        ([str(one), "--dev-fraction", "1.5", *outs], "--dev-fraction must be in [0, 1), got 1.5"),
        # a dev path under a file: found before the train side is written
        ([str(one), "--train-out", str(tmp_path / "tr.jsonl"), "--dev-out", str(one / "dev.jsonl")],
         f"--dev-out {one / 'dev.jsonl'}: {one} is a file, not a folder"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main(["data", "split", *argv]) == 2
        assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.jsonl", "one.jsonl"]


def test_cli_data_split_replaces_neither_file_when_one_cannot_be_written(tmp_path, capsys, monkeypatch):
    # the dev side failing (a full disk) once the train side was written left a train file of the new split next
    # to a dev file of the old one, and an error that named a hidden temporary file
    import errno

    import tuner.data

    src = tmp_path / "src.jsonl"
    write_groups(_groups(4), src)
    (tmp_path / "tr.jsonl").write_text("old train\n")
    (tmp_path / "dev.jsonl").write_text("old dev\n")
    real = tuner.data.write_groups

    def full_disk(groups, path):
        if Path(path).name.startswith(("dev.jsonl", ".dev.jsonl.")):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(groups, path)

    monkeypatch.setattr(tuner.data, "write_groups", full_disk)
    outs = ["--train-out", str(tmp_path / "tr.jsonl"), "--dev-out", str(tmp_path / "dev.jsonl")]
    assert main(["data", "split", str(src), "--dev-fraction", "0.5", *outs]) == 2
    err = capsys.readouterr().err
    assert f"--dev-out {tmp_path / 'dev.jsonl'}: cannot write in {tmp_path} (no space left on device)" in err
    assert (tmp_path / "tr.jsonl").read_text() == "old train\n"
    assert (tmp_path / "dev.jsonl").read_text() == "old dev\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev.jsonl", "src.jsonl", "tr.jsonl"]


def test_groups_as_collection_never_merges_two_groups_and_counts_a_document_once():
    from tuner.data.groups import groups_as_collection

    groups = [
        Group(query="a", pos=["x"], neg=["y"], qid="q2"),  # the id row 2 would be given
        Group(query="b", pos=[{"text": "x"}], neg=["z"]),  # "x" written as an object: the same document
        Group(query="c", pos=["u"], neg=["y"], qid="7"),
        Group(query="d", pos=["v"], neg=["y", "v"], qid="7"),  # a repeated qid; "v" both positive and negative
    ]
    c = groups_as_collection(groups)
    assert list(c.beir.queries.values()) == ["a", "b", "c", "d"] and len(set(c.beir.queries)) == 4
    assert list(c.beir.queries)[:1] == ["q2"] and "7" in c.beir.queries
    assert len(c.beir.corpus) == 5  # x, y, z, u, v
    a, b, _, d = c.documents.values()
    assert a[0] == b[0] and len(d) == 2 and list(c.beir.qrels.values())[3] == {d[0]: 1}
    # a positive listed twice is one qrel, at the higher of its grades, whichever copy comes first
    for grades in ([3, 1], [1, 3]):
        graded = groups_as_collection([Group(query="g", pos=["x", {"text": "x"}], pos_grades=grades)])
        assert graded.beir.qrels == {"q1": {"d1": 3}} and graded.documents == {"q1": ["d1"]}


def test_json_errors_point_at_the_end_of_the_line_that_is_short_not_the_next_line(tmp_path):
    # a missing brace or comma at the end of a line: the parser stops at the next line's start (or past the end
    # of a JSONL line, its newline), and "column 1" sends the reader to the wrong place
    jsonl = tmp_path / "g.jsonl"
    jsonl.write_text(GOOD + '{"query": "q", "pos": ["p"]\n', encoding="utf-8")
    errors = check_file(jsonl, tokens=False).errors
    assert errors == [f"{jsonl}:2: invalid JSON (Expecting ',' delimiter at column 28)"], errors
    whole = tmp_path / "g.json"
    whole.write_text('[\n  {"query": "q", "pos": ["p"]}\n  {"query": "r", "pos": ["s"]}\n]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"g\.json:2: invalid JSON \(Expecting ',' delimiter at column 31\)"):
        load_groups(whole)


def test_json_errors_of_a_line_cut_inside_a_string_read_as_one_phrase(tmp_path):
    # the json module's "Unterminated string starting at" and "Invalid control character at" end in "at": the
    # message gave "at at column"; and a JSONL line cut inside a string was blamed on its newline (a control
    # character) instead of the string it leaves open
    jsonl = tmp_path / "g.jsonl"
    jsonl.write_text(GOOD + '{"query": "q", "pos": ["p\n' + '{"query": "a\tb"}\n', encoding="utf-8")
    assert check_file(jsonl, tokens=False).errors == [
        f"{jsonl}:2: invalid JSON (Unterminated string starting at column 24)",
        f"{jsonl}:3: invalid JSON (Invalid control character at column 13)",
    ]
    whole = tmp_path / "g.json"
    whole.write_text('[{"query": "q", "pos": ["p', encoding="utf-8")
    with pytest.raises(DataError, match=r"g\.json:1: invalid JSON \(Unterminated string starting at column 25\)$"):
        load_groups(whole)


def test_a_utf16_file_is_named_as_one(tmp_path):
    # a spreadsheet's "Unicode text" export is UTF-16: "invalid start byte at byte 0" alone did not say so
    hint = "; the file is UTF-16 (it starts with a UTF-16 byte-order mark): save it as UTF-8"
    jsonl = tmp_path / "g.jsonl"
    jsonl.write_bytes(GOOD.encode("utf-16"))
    assert check_file(jsonl, tokens=False).errors[0] == (
        f"{jsonl}:1: not UTF-8 text (invalid start byte at byte 0 of the line){hint}"
    )
    table = tmp_path / "pairs.csv"
    table.write_bytes("query,document,label\nq,d,1\n".encode("utf-16"))
    with pytest.raises(DataError, match=re.escape(hint) + "$"):
        load_groups(table)


def test_fractional_pair_labels_count_as_positives_and_are_warned_about(tmp_path, caplog):
    """A label strictly between 0 and 1 is a positive (label > 0); probability-like labels do not mean that, so the
    load and `data check` say so, naming the first such row."""
    rows = [
        {"query": "q", "document": "barely", "label": 0.2},
        {"query": "q", "document": "clearly", "label": 1},
        {"query": "q", "document": "not", "label": 0},
        {"query": "r", "document": "half", "label": 0.5},
    ]
    path = tmp_path / "soft.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    with caplog.at_level("WARNING", logger="tuner"):
        loaded = read_groups(path)
    assert loaded.fractional_labels == 2 and loaded.first_fractional.endswith(":1")
    assert loaded.groups[0].pos == ["barely", "clearly"] and loaded.groups[0].neg == ["not"]
    assert "2 pair labels lie strictly between 0 and 1" in caplog.text and "loss.kind=distill" in caplog.text
    report = check_file(path, tokens=False)
    assert report.stats["fractional_labels"] == 2 and any("strictly between 0 and 1" in w for w in report.warnings)
    binary = tmp_path / "binary.jsonl"
    binary.write_text("\n".join(json.dumps({**r, "label": int(r["label"] > 0)}) for r in rows) + "\n")
    assert (
        read_groups(binary).fractional_labels == 0 and not check_file(binary, tokens=False).stats["fractional_labels"]
    )


def test_cli_data_check_passes_max_length_and_no_tokens_on(tmp_path, monkeypatch, capsys):
    """`data check --max-length N --no-tokens`: both reach `check_file` (the default budget is the contract's)."""
    from tuner.data import check

    seen = []
    real = check.check_file

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **{**kwargs, "tokens": False})  # no tokenizer: the test is about what is passed

    monkeypatch.setattr(check, "check_file", spy)
    path = _jsonl(tmp_path / "g.jsonl", GROUPED)
    assert main(["data", "check", str(path), "--max-length", "200", "--no-tokens"]) == 0
    assert main(["data", "check", str(path)]) == 0
    assert [(kw["max_length"], kw["tokens"]) for kw in seen] == [(200, False), (1024, True)]


def test_cli_data_split_defaults_and_the_ends_of_the_fraction(tmp_path, capsys):
    """Without flags: 10% of the queries to dev, seed 0; --dev-fraction 0 puts every group in train (an empty dev
    file, not an error); 1.0 is refused by name before anything is read."""
    src = tmp_path / "all.jsonl"
    write_groups(_groups(20), src)
    outs = ["--train-out", str(tmp_path / "train.jsonl"), "--dev-out", str(tmp_path / "dev.jsonl")]
    assert main(["data", "split", str(src), *outs]) == 0
    assert (load_groups(tmp_path / "train.jsonl"), load_groups(tmp_path / "dev.jsonl")) == split_groups(
        _groups(20), 0.1, 0
    )
    assert len(load_groups(tmp_path / "dev.jsonl")) == 2
    assert "replaced" not in capsys.readouterr().out
    assert main(["data", "split", str(src), "--dev-fraction", "0", *outs]) == 0
    printed = capsys.readouterr().out  # the files of the first split are replaced: said, not silent
    assert f"train: 20 groups -> {tmp_path / 'train.jsonl'} (replaced the previous file)" in printed
    assert f"dev: 0 groups -> {tmp_path / 'dev.jsonl'} (replaced the previous file)" in printed
    assert len(load_groups(tmp_path / "train.jsonl")) == 20 and (tmp_path / "dev.jsonl").read_text() == ""
    assert main(["data", "split", str(src), "--dev-fraction", "1", *outs]) == 2
    assert "--dev-fraction must be in [0, 1), got 1.0" in capsys.readouterr().err


def test_an_empty_instruction_survives_write_and_split(tmp_path):
    """`"instruction": ""` (no instruction) is not `None` (the recipe's or contract's default): writing a group
    (`data split`, `mine`) keeps it."""
    groups = [Group(query=f"q{i}", pos=[f"p{i}"], neg=[f"n{i}"], instruction="") for i in range(4)]
    src = write_groups(groups, tmp_path / "all.jsonl")
    assert [g.instruction for g in load_groups(src)] == [""] * 4
    outs = ["--train-out", str(tmp_path / "train.jsonl"), "--dev-out", str(tmp_path / "dev.jsonl")]
    assert main(["data", "split", str(src), "--dev-fraction", "0.5", *outs]) == 0
    assert {g.instruction for part in ("train", "dev") for g in load_groups(tmp_path / f"{part}.jsonl")} == {""}
