"""Input limits and the messages of the data layer: the largest grade, qrels files, misnamed files, warnings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tuner.cli import main
from tuner.data import DataError, load_beir, load_groups, read_groups
from tuner.data.schema import MAX_GRADE


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _beir(folder: Path, qrels: str, split: str = "test") -> Path:
    """A two-document BEIR folder whose `qrels/<split>.tsv` holds `qrels` as given."""
    (folder / "qrels").mkdir(parents=True)
    docs = [{"_id": "d0", "title": "", "text": "solar panel efficiency"}, {"_id": "d1", "text": "river flood model"}]
    _jsonl(folder / "corpus.jsonl", docs)
    _jsonl(folder / "queries.jsonl", [{"_id": "q0", "text": "solar panels"}, {"_id": "q1", "text": "floods"}])
    (folder / "qrels" / f"{split}.tsv").write_text(qrels, encoding="utf-8")
    return folder


# ------------------------------------------------------------------------------------------- largest grade
def test_the_largest_grade_is_100():
    # nDCG's gains and the listwise target are linear in the grade; 100 keeps the 0-100 scales of real data
    assert MAX_GRADE == 100


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"query": "q", "document": "d", "label": 3000000000}, "field 'label' must be at most 100, the largest"),
        ({"query": "q", "document": "d", "label": 1e308}, "field 'label' must be at most 100, the largest"),
        ({"query": "q", "document": "d", "label": 100.5}, "field 'label' must be at most 100, the largest"),
        ({"query": "q", "pos": ["p", "o"], "pos_grades": [2, 1e300]}, "field 'pos_grades[1]' must be at most 100, the"),
        ({"query": "q", "pos": ["p"], "pos_grades": [101]}, "field 'pos_grades[0]' must be at most 100, the"),
    ],
)
def test_a_grade_above_the_largest_is_named_with_its_line_and_field(tmp_path, row, message, capsys):
    path = _jsonl(tmp_path / "big.jsonl", [{"query": "r", "document": "e", "label": 1}, row])
    with pytest.raises(DataError) as err:
        load_groups(path)
    assert str(err.value).startswith(f"{path}:2: {message}") and "(rescale the grades, e.g. to 0-4)" in str(err.value)
    assert main(["data", "check", str(path), "--no-tokens"]) == 1
    assert f"error: {path}:2: {message}" in capsys.readouterr().out


def test_a_teacher_score_out_of_range_is_named_and_a_large_real_one_is_kept(tmp_path, capsys):
    """1e300 is a finite float, but inf in the fp32 softmax of the distill loss (NaN at step 1)."""
    row = {"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": [2.5], "neg_scores": [-1e300]}
    path = _jsonl(tmp_path / "teacher.jsonl", [row])
    said = f"{path}:1: field 'neg_scores[0]' must lie between -1,000,000 and 1,000,000"
    with pytest.raises(DataError, match=re.escape(said)):
        load_groups(path)
    assert main(["data", "check", str(path), "--no-tokens"]) == 1
    assert "neg_scores[0]" in capsys.readouterr().out
    kept = _jsonl(tmp_path / "bm25.jsonl", [{**row, "neg_scores": [-35000.0]}])  # e.g. a dot product
    assert load_groups(kept)[0].neg_scores == [-35000.0]


def test_the_largest_grade_itself_is_kept(tmp_path):
    rows = [
        {"query": "q", "document": "top", "label": 100},
        {"query": "q", "document": "some", "label": 3},
        {"query": "q", "document": "none", "label": 0},
        {"query": "r", "pos": ["a", "b"], "pos_grades": [100, 1.0]},
    ]
    groups = load_groups(_jsonl(tmp_path / "ok.jsonl", rows))
    assert [g.pos_grades for g in groups] == [[100, 3], [100, 1]]


def test_a_csv_label_above_the_largest_grade_is_named(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("query,document,label\nq,d,1\nq,e,3000000000\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:3: field 'label' must be at most 100, the largest relevance grade"):
        load_groups(path)


def test_numbers_too_large_for_a_float_are_errors_not_crashes(tmp_path, capsys):
    """A 400-digit integer overflows float() (an OverflowError, not a DataError); one of 5000 digits is more than
    Python reads (a ValueError out of json.loads)."""
    path = tmp_path / "huge.jsonl"
    path.write_text(
        '{"query": "q", "document": "d", "label": 1' + "0" * 400 + "}\n"
        '{"query": "q", "document": "e", "label": -1' + "0" * 400 + "}\n"
        '{"query": "q", "pos": ["p"], "pos_scores": [1' + "0" * 400 + "]}\n"
        '{"query": "q", "pos": ["p"], "pos_grades": [1' + "0" * 400 + "]}\n"
        '{"query": "q", "document": "d", "label": 1' + "0" * 5000 + "}\n",
        encoding="utf-8",
    )
    loaded = read_groups(path, collect_errors=True, require_positive=False)
    expected = [
        f"{path}:1: field 'label' must be a number, got 10000000000000000000... (401 characters)",
        f"{path}:2: field 'label' must be a number, got -1000000000000000000... (402 characters)",
        f"{path}:3: field 'pos_scores[0]' must be a finite number, got 10000000000000000000... (401 characters)",
        f"{path}:4: field 'pos_grades[0]' must be a finite number, got 10000000000000000000... (401 characters)",
        f"{path}:5: invalid JSON (a number of more than 4300 digits)",
    ]
    assert loaded.errors == expected
    array = tmp_path / "huge.json"
    array.write_text('[{"query": "q", "document": "d", "label": 1' + "0" * 5000 + "}]\n", encoding="utf-8")
    assert main(["data", "check", str(array), "--no-tokens"]) == 2
    assert f"{array}: invalid JSON (a number of more than 4300 digits)" in capsys.readouterr().err


def test_a_qrels_score_above_the_largest_grade_is_named(tmp_path, capsys):
    folder = _beir(tmp_path / "b", "query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td1\t3000000000\n")
    message = rf"{folder}/qrels/test\.tsv:3: score '3000000000' is above 100, the largest relevance grade"
    with pytest.raises(DataError, match=message):
        load_beir(folder)
    assert main(["data", "check", str(folder), "--no-tokens"]) == 2
    assert "test.tsv:3: score '3000000000' is above 100" in capsys.readouterr().err
    (folder / "qrels" / "test.tsv").write_text("q0\td0\t100\nq1\td1\t-1\n", encoding="utf-8")
    assert load_beir(folder).qrels == {"q0": {"d0": 100}, "q1": {"d1": -1}}


# ------------------------------------------------------------------------------------------------- qrels files
@pytest.mark.parametrize(
    ("qrels", "why"),
    [("query-id\tcorpus-id\tscore\n", "only a header"), ("", "the file is empty"), ("\n\n", "the file is empty")],
)
def test_qrels_without_a_judgment_are_named_before_any_indexing(tmp_path, capsys, monkeypatch, qrels, why):
    """A header alone made `tuner mine` build its BM25 index and then advise lowering --range-min; `tuner eval`
    would average over no query."""
    folder = _beir(tmp_path / "b", qrels, split="train")
    (folder / "qrels" / "test.tsv").write_text(qrels, encoding="utf-8")

    def no_index(*args, **kwargs):
        raise AssertionError("a BM25 index was built")

    monkeypatch.setattr("tuner.retrieval.BM25", no_index)
    message = f"{folder / 'qrels' / 'train.tsv'}: no judgments ({why}"
    with pytest.raises(DataError, match=f"^{re.escape(message)}"):
        load_beir(folder, "train")
    out = tmp_path / "out" / "mined.jsonl"
    assert main(["mine", "--beir", str(folder), "--split", "train", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"tuner mine: error: {message}" in err and "--range-min" not in err and not out.exists()
    # eval reads the qrels before it looks for the model
    assert (
        main(["eval", "--model", str(tmp_path / "no-model"), "--beir", str(folder), "--out", str(tmp_path / "e")]) == 2
    )
    assert f"tuner eval: error: {folder / 'qrels' / 'test.tsv'}: no judgments ({why}" in capsys.readouterr().err
    assert main(["data", "check", str(folder), "--split", "train"]) == 2
    assert message in capsys.readouterr().err


def test_space_separated_qrels_may_have_a_header(tmp_path):
    folder = _beir(tmp_path / "b", "query-id corpus-id score\nq0 d0 1\nq1 d1 2\n")
    assert load_beir(folder).qrels == {"q0": {"d0": 1}, "q1": {"d1": 2}}
    (folder / "qrels" / "test.tsv").write_text("qid iter docno rel\nq0 0 d0 1\nq1 0 d1 0\n", encoding="utf-8")
    assert load_beir(folder).qrels == {"q0": {"d0": 1}, "q1": {"d1": 0}}
    # a header is the first line only: a second one is a bad row, named
    (folder / "qrels" / "test.tsv").write_text("q0 d0 1\nquery-id corpus-id score\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"test\.tsv:2: score 'score' is not an integer"):
        load_beir(folder)


def test_a_judged_document_missing_from_the_corpus_is_named_by_qrels_file_and_line(tmp_path, capsys):
    qrels = "query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td1\t1\nq1\td999\t1\nq1\td998\t0\n"
    folder = _beir(tmp_path / "missingdoc", qrels, split="train")
    place = f"{folder / 'qrels' / 'train.tsv'}:4"
    out = tmp_path / "out.jsonl"
    assert main(["mine", "--beir", str(folder), "--split", "train", "--out", str(out), "--no-progress"]) == 2
    assert (
        f"tuner mine: error: {place}: qrels query 'q1' judges document 'd999' relevant, and the corpus has no such _id"
    ) in capsys.readouterr().err
    assert main(["data", "check", str(folder), "--split", "train"]) == 1
    printed = capsys.readouterr().out
    assert f"error: {place}: judged document 'd999' is not in the corpus (2 judged documents missing in all)" in printed


# ------------------------------------------------------------------------------------------ misread files
@pytest.mark.parametrize(
    ("text", "line", "end"),
    [
        ('query,document,label\nq,"unterminated,1\nq,e,0\n', 2, 3),
        ('query,document,label\nq,"multi\nline",1\nq,e,0\nq,"x\ny","open,1\nq,e,0\n', 6, 7),  # after quoted breaks
        ('query,document,label\nq,d,1\nq,"open', 3, 3),  # no line break at the end
    ],
)
def test_an_unterminated_csv_quote_is_named_where_it_opens(tmp_path, capsys, text, line, end):
    """Python's csv reads the rest of the file into a quoted cell that never closes; the row then read as
    '2 cells, the header names 3 columns', which hid the cause."""
    path = tmp_path / "u.csv"
    path.write_text(text, encoding="utf-8")
    message = (
        f"{path}:{line}: a quoted field opened on this line is never closed (no closing '\"'; the rest of the file, "
        f"to line {end}, was read into it)"
    )
    with pytest.raises(DataError) as err:
        load_groups(path)
    assert str(err.value) == message
    assert main(["data", "check", str(path), "--no-tokens"]) == 1
    out = capsys.readouterr().out
    assert f"error: {message}" in out and "cells, the header names" not in out
    path.write_text('query,"document,label\nq,d,1\n', encoding="utf-8")  # in the header: the file cannot be read
    assert main(["data", "check", str(path), "--no-tokens"]) == 2
    assert f"{path}:1: a quoted field opened on this line is never closed" in capsys.readouterr().err


def test_a_csv_quote_that_closes_late_is_an_error_not_rows_read_into_one_cell(tmp_path, capsys):
    """Without csv's strict mode the rows between a quote left open and the next quote became one document, with
    no error: q1's positive held q2's row, and q2 and q3 were lost."""
    path = tmp_path / "late.csv"
    path.write_text('query,document,label\nq1,"doc one, part,1\nq2,doc two,1\nq3,"doc three",1\nq4,d,1\n', "utf-8")
    message = (
        f"{path}:2: not valid CSV (comma-separated) (',' expected after '\"'): a quoted cell of this row closes only "
        "on line 4, with text after its closing '\"' (is a quote in this row unbalanced?)"
    )
    with pytest.raises(DataError) as err:
        load_groups(path)
    assert str(err.value) == message
    assert main(["data", "check", str(path), "--no-tokens"]) == 1
    assert f"error: {message}" in capsys.readouterr().out
    path.write_text('query,document,label\nq,"doc" x,1\nq,e,0\n', "utf-8")  # on one line: no word on other lines
    with pytest.raises(DataError) as err:
        load_groups(path)
    assert str(err.value) == f"{path}:2: not valid CSV (comma-separated) (',' expected after '\"')"


def test_quoted_csv_cells_that_close_and_tsv_quotes_are_read_as_before(tmp_path):
    path = tmp_path / "ok.csv"
    path.write_text('query,document,label\nq,"two\nlines, and ""quotes""",1\nq,"last"', encoding="utf-8")
    with pytest.raises(DataError, match=r"ok\.csv:4: 2 cells, the header names 3 columns"):
        load_groups(path)  # a short last row, closed: not a quote problem
    path.write_text('query,document,label\nq,"two\nlines, and ""quotes""",1\nq,"last",0', encoding="utf-8")
    (group,) = load_groups(path)
    assert group.pos == ['two\nlines, and "quotes"'] and group.neg == ["last"]
    tsv = tmp_path / "ok.tsv"
    tsv.write_text('query\tdocument\tlabel\nq\t"opens a quote\t1\nq\te\t0\n', encoding="utf-8")  # TSV is unquoted
    (group,) = load_groups(tsv)
    assert group.pos == ['"opens a quote'] and group.neg == ["e"]


def test_a_json_array_saved_as_jsonl_is_named_as_such(tmp_path, capsys):
    hint = (
        "the file holds one JSON array, not JSON Lines: name it .json (read as an array of rows) or write one object "
        "per line"
    )
    path = tmp_path / "a.jsonl"
    path.write_text('[{"query": "q", "pos": ["a"], "neg": ["b"]}]\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_groups(path)
    assert str(err.value) == f"{path}:1: a row must be a JSON object, got list; {hint}"
    assert main(["data", "check", str(path), "--no-tokens"]) == 1
    assert f"error: {path}:1: a row must be a JSON object, got list; {hint}" in capsys.readouterr().out
    # pretty-printed, the array's first line is not JSON on its own
    path.write_text('[\n  {"query": "q", "pos": ["a"], "neg": ["b"]}\n]\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_groups(path)
    assert str(err.value) == f"{path}:1: invalid JSON (Expecting value at column 2); {hint}"
    # the advice holds: named .json, the same text is read
    (group,) = load_groups(path.rename(tmp_path / "a.json"))
    assert (group.pos, group.neg) == (["a"], ["b"])
    # a list that is not an array of rows, or one on a later line, is a bad row and no more
    path.write_text('{"query": "q", "pos": ["a"]}\n[{"query": "q", "pos": ["a"]}]\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_groups(path)
    assert str(err.value) == f"{path}:2: a row must be a JSON object, got list"
    path.write_text('["q", "a"]\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_groups(path)
    assert str(err.value) == f"{path}:1: a row must be a JSON object, got list"


# ------------------------------------------------------------------------------------------------ warnings
def test_negative_pair_labels_count_as_negatives_and_are_warned_about(tmp_path, caplog):
    rows = [
        {"query": "q", "document": "good", "label": 1},
        {"query": "q", "document": "bad", "label": -1},
        {"query": "q", "document": "worse", "label": -0.5},
        {"query": "q", "document": "plain", "label": 0},
    ]
    path = _jsonl(tmp_path / "neg.jsonl", rows)
    with caplog.at_level("WARNING", logger="tuner"):
        loaded = read_groups(path)
    assert loaded.groups[0].pos == ["good"] and loaded.groups[0].neg == ["bad", "worse", "plain"]
    assert loaded.negative_labels == 2 and loaded.first_negative == f"{path}:2"
    expected = (
        f"2 pair labels lie below 0 (first: {path}:2); each counts as a negative (label <= 0), as 0 does. If they are "
        "scores (logits, similarities from -1 to 1), threshold them into 0/1 labels, or give them as teacher scores "
        "(pos_scores / neg_scores) with loss.kind=distill"
    )
    assert expected in caplog.text
    assert main(["data", "check", str(path), "--no-tokens", "--json"]) == 0
    binary = _jsonl(tmp_path / "binary.jsonl", [{**r, "label": int(r["label"] > 0)} for r in rows])
    assert read_groups(binary).negative_labels == 0


def test_data_check_says_each_load_warning_once(tmp_path, capsys, caplog):
    """The load logged its warnings and the report printed them again."""
    rows = [
        {"query": "q", "document": "soft", "label": 0.5},
        {"query": "q", "document": "scored", "label": -2},
        {"query": "r", "document": "none", "label": 0},
    ]
    path = _jsonl(tmp_path / "soft.jsonl", rows)
    evaluation = _beir(tmp_path / "eval", "query-id corpus-id score\nq0 d0 1\n")
    for extra in ([], ["--against", str(evaluation)]):  # --against counts on the groups the check read
        caplog.clear()
        with caplog.at_level("WARNING", logger="tuner"):
            assert main(["data", "check", str(path), "--no-tokens", *extra]) == 0
        captured = capsys.readouterr()
        said = captured.out + captured.err + caplog.text
        for warning in ("strictly between 0 and 1", "lie below 0", "no positive label"):
            assert said.count(warning) == 1, (warning, extra, said)
        assert "OK: 0 errors, 3 warnings" in captured.out
