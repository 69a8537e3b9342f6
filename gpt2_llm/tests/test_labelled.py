"""Labelled texts for classification (labelled.py): the three formats, bad rows, balance and split."""

import json

import pytest

from basics import UserError
from gpt2_llm.labelled import balance, read_labelled, split


def test_the_sms_spam_collection_reads_as_it_is_and_splits_as_the_book_does(data_dir):
    sms = data_dir / "sms_spam" / "SMSSpamCollection"
    if not sms.is_file():
        pytest.skip(f"{sms} is missing")
    data = read_labelled(sms)
    assert data.names == ["ham", "spam"] and data.counts() == [4827, 747] and not data.skipped
    assert data.texts[0].startswith("Go until jurong point") and data.labels[:3] == [0, 0, 1]
    assert any('"' in text for text in data.texts)  # quotes are part of the messages: no CSV quoting
    balanced = balance(data)
    assert balanced.counts() == [747, 747]
    train, val, test = split(balanced)
    assert [len(p.texts) for p in (train, val, test)] == [1045, 149, 300]  # the book's 70/10/20 of 1,494
    assert sorted(train.texts + val.texts + test.texts) == sorted(balanced.texts)


def test_jsonl_with_bad_rows_counted_in_one_line(tmp_path):
    rows = [{"text": "good one", "label": "pos"}, {"text": "bad one", "label": "neg"}, {"text": "", "label": "pos"},
            {"text": "no label"}, {"text": "fine", "label": "pos"}, {"text": "lonely", "label": "odd"},
            {"text": "meh", "label": "neg"}]  # fmt: skip
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n[1, 2]\n")
    data = read_labelled(path)
    assert data.texts == ["good one", "bad one", "fine", "meh"] and data.names == ["neg", "pos"]
    assert data.labels == [1, 0, 1, 0]
    assert data.summary() == ("4 examples of 2 classes (neg 2, pos 2); left out: 1 empty texts, 1 lines that are not "
                              "JSON, 1 lines that are not JSON objects, 1 missing labels, 1 rows of labels seen once")


def test_integer_labels_sort_by_value_and_other_field_names(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"sentence": f"s{i}", "y": y}) + "\n" for i, y in enumerate([10, 2, 2, 10, 9, 9])))
    data = read_labelled(path, text_column="sentence", label_column="y")
    assert data.names == ["2", "9", "10"] and data.labels == [2, 0, 0, 2, 1, 1]


def test_csv_with_a_header_quotes_and_columns_by_name_or_index(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('id,Label,Text\n1,spam,"Win, now!"\n2,ham,"He said ""hi"""\n3,spam,x\n4,ham,y\n')
    data = read_labelled(path)
    assert data.texts == ["Win, now!", 'He said "hi"', "x", "y"] and data.names == ["ham", "spam"]
    assert read_labelled(path, text_column="id", label_column="label").texts == ["1", "2", "3", "4"]
    bare = tmp_path / "bare.csv"
    bare.write_text('"Win, now!",spam\nhello there,ham\nagain,spam\nbye,ham\n')  # no header: the label column has fewer values
    assert read_labelled(bare).texts == ["Win, now!", "hello there", "again", "bye"]
    assert read_labelled(bare, text_column=0, label_column=1).labels == [1, 0, 1, 0]
    with pytest.raises(UserError, match="no column named body in the header: id, label, text"):
        read_labelled(path, text_column="body", label_column="label")


def test_tsv_keeps_tabs_and_quotes_in_the_text(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text('a\t"quoted" text\nb\tone\ttwo\na\tx\nb\ty\n')
    data = read_labelled(path)
    assert data.texts == ['"quoted" text', "one\ttwo", "x", "y"] and data.labels == [0, 1, 0, 1]


@pytest.mark.parametrize("content, says", [
    ("a\tone\na\ttwo\n", "has 1 class with at least two examples"),
    ("", "has 0 classes"),
    ("only\n", "each row needs a label and a text"),
])  # fmt: skip
def test_files_that_cannot_train_a_classifier_are_refused_in_one_line(tmp_path, content, says):
    path = tmp_path / "d.tsv"
    path.write_text(content)
    with pytest.raises(UserError, match=says):
        read_labelled(path)


def test_balance_and_split_are_seeded():
    from gpt2_llm.labelled import Labelled

    data = Labelled([f"t{i}" for i in range(30)], [0] * 20 + [1] * 10, ["a", "b"])
    once, again = balance(data, seed=1), balance(data, seed=1)
    assert once.texts == again.texts and once.counts() == [10, 10] and balance(data, seed=2).texts != once.texts
    parts = split(once, (0.5, 0.5), seed=3)
    assert [len(p.texts) for p in parts] == [10, 10] and not set(parts[0].texts) & set(parts[1].texts)
    assert split(once, (0.5, 0.5), seed=3)[0].texts == parts[0].texts
