"""Labelled texts for classification (issue 31, first step): read, clean, balance and split them.

    JSONL            {"text": ..., "label": ...} per line (other field names: text_column, label_column)
    CSV (.csv)       with or without a header, quoted as CSV is; columns by name or 0-based index
    TSV (otherwise)  plain tab-separated lines, no quoting (many messages hold quotes), such as the
                     SMS Spam Collection's `label<TAB>text`

Without column names: a header naming "text" and "label" is used if the first row has one; else
two columns are (label, text) when the first holds fewer distinct values, (text, label) otherwise.
Rows that cannot be used (an empty text, a missing label, a label seen once) are left out and
counted; a file with fewer than two classes is refused. Labels may be strings or integers: the
class names are their texts, in sorted order (integers by value), and a label is its name's index.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import random
from pathlib import Path

from basics import UserError

TEXT_NAMES, LABEL_NAMES = ("text", "sentence", "message"), ("label", "labels", "class", "category")


@dataclasses.dataclass
class Labelled:
    texts: list[str]
    labels: list[int]  # index into names
    names: list[str]  # the class names, in label order
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # why -> rows

    def counts(self) -> list[int]:
        tally = collections.Counter(self.labels)
        return [tally[i] for i in range(len(self.names))]

    def summary(self) -> str:
        """One line: examples, classes with their counts, and what was left out."""
        classes = ", ".join(f"{name} {n:,}" for name, n in zip(self.names, self.counts()))
        line = f"{len(self.texts):,} examples of {len(self.names)} classes ({classes})"
        if self.skipped:
            line += "; left out: " + ", ".join(f"{n:,} {why}" for why, n in sorted(self.skipped.items()))
        return line

    def subset(self, rows: list[int]) -> Labelled:
        return Labelled([self.texts[i] for i in rows], [self.labels[i] for i in rows], self.names)


def read_labelled(path: str | Path, text_column: str | int | None = None,
                  label_column: str | int | None = None) -> Labelled:  # fmt: skip
    """The labelled texts of a JSONL, CSV or TSV file (see the module's docstring)."""
    path = Path(path)
    try:
        raw = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text: invalid byte at offset {e.start}") from None
    skipped = collections.Counter()
    if path.suffix.lower() in (".jsonl", ".json"):
        pairs = json_pairs(raw, text_column or "text", label_column or "label", skipped)
    else:
        rows = list(csv.reader(raw.splitlines())) if path.suffix.lower() == ".csv" else \
            [line.split("\t") for line in raw.splitlines() if line.strip()]  # fmt: skip
        pairs = table_pairs(rows, text_column, label_column, skipped, tsv=path.suffix.lower() != ".csv")
    return labelled_of(pairs, skipped, path)


def json_pairs(raw: str, text_key: str | int, label_key: str | int, skipped: collections.Counter) -> list:
    pairs = []
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            skipped["lines that are not JSON"] += 1
            continue
        if not isinstance(record, dict):
            skipped["lines that are not JSON objects"] += 1
            continue
        pairs.append((record.get(str(text_key)), record.get(str(label_key))))
    return pairs


def table_pairs(rows: list[list[str]], text_column, label_column, skipped: collections.Counter,
                tsv: bool) -> list:  # fmt: skip
    """(text, label) of each row, the columns found by name (in a header) or by index. In a TSV
    whose text is the last column, tabs inside the text stay part of it."""
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0]]
    named = [c for c in (text_column, label_column) if isinstance(c, str) and not c.isdigit()]
    if named or (text_column is None and any(h in TEXT_NAMES for h in header) and any(h in LABEL_NAMES for h in header)):
        text_at = column_index(header, text_column, TEXT_NAMES)
        label_at = column_index(header, label_column, LABEL_NAMES)
        rows = rows[1:]
    elif text_column is not None or label_column is not None:
        if text_column is None or label_column is None:
            raise UserError("give both --text-column and --label-column for a file without a header")
        text_at, label_at = int(text_column), int(label_column)
    else:
        if len(rows[0]) < 2:
            raise UserError("each row needs a label and a text, separated by a tab (a comma in a .csv)")
        distinct = [len({row[i] for row in rows if len(row) > i}) for i in (0, 1)]
        label_at, text_at = (0, 1) if distinct[0] <= distinct[1] else (1, 0)
    pairs = []
    for row in rows:
        if len(row) <= max(text_at, label_at):
            skipped["rows without a label or a text"] += 1
            continue
        text = "\t".join(row[text_at:]) if tsv and text_at > label_at else row[text_at]
        pairs.append((text, row[label_at]))
    return pairs


def column_index(header: list[str], column: str | int | None, names: tuple[str, ...]) -> int:
    if isinstance(column, int) or (isinstance(column, str) and column.isdigit()):
        return int(column)
    wanted = (column.lower(),) if column is not None else names
    found = next((i for i, h in enumerate(header) if h in wanted), None)
    if found is None:
        raise UserError(f"no column named {' or '.join(wanted)} in the header: {', '.join(header)}")
    return found


def labelled_of(pairs: list, skipped: collections.Counter, path: Path) -> Labelled:
    """Clean (text, label) pairs: empty texts, missing labels and labels seen once are left out."""
    kept = []
    for text, label in pairs:
        if not isinstance(text, str) or not text.strip():
            skipped["empty texts"] += 1
        elif label is None or (isinstance(label, str) and not label.strip()) or isinstance(label, (bool, list, dict, float)):
            skipped["missing labels"] += 1
        else:
            kept.append((text, str(label).strip()))
    tally = collections.Counter(label for _, label in kept)
    once = {label for label, n in tally.items() if n == 1}
    if once:
        skipped["rows of labels seen once"] += len(once)
        kept = [(t, label) for t, label in kept if label not in once]
    names = sorted({label for _, label in kept}, key=lambda n: (0, int(n), n) if n.lstrip("-").isdigit() else (1, 0, n))
    if len(names) < 2:
        raise UserError(f"{path} has {len(names)} class{'es' if len(names) != 1 else ''} with at least two examples; "
                        f"classification needs two or more")
    index = {name: i for i, name in enumerate(names)}
    return Labelled([t for t, _ in kept], [index[label] for _, label in kept], names, skipped)


def balance(data: Labelled, seed: int = 123) -> Labelled:
    """As many examples of each class as of the rarest one (--balance), drawn with the seed, in file order."""
    rng = random.Random(seed)
    rarest = min(data.counts())
    rows = []
    for label in range(len(data.names)):
        of_label = [i for i, y in enumerate(data.labels) if y == label]
        rows += rng.sample(of_label, rarest)
    return data.subset(sorted(rows))


def split(data: Labelled, fractions: tuple[float, ...] = (0.7, 0.1, 0.2), seed: int = 123) -> list[Labelled]:
    """Shuffle with the seed, then cut into parts of these fractions (the last takes the rest)."""
    rows = list(range(len(data.texts)))
    random.Random(seed).shuffle(rows)
    parts, start = [], 0
    for i, fraction in enumerate(fractions):
        end = len(rows) if i == len(fractions) - 1 else start + int(fraction * len(rows))
        parts.append(data.subset(rows[start:end]))
        start = end
    return parts


def run_parts(data: Labelled, balanced: bool, val_fraction: float, test_fraction: float) -> tuple[Labelled, ...]:
    """(the examples a --classify run uses: balanced if asked; its training, validation and test
    parts), as the run cuts them: a tokenizer learned for the run reads the training part alone."""
    data = balance(data) if balanced else data
    return (data, *split(data, (1 - val_fraction - test_fraction, val_fraction, test_fraction)))
