"""A scorable instruction set made from rules: every answer is exact, so a model is scored by exact match.

    python benchmarks/make_instructions.py out/              # out/train.jsonl (90%), out/test.jsonl (10%)
    python benchmarks/make_instructions.py out/ --count 5000 --seed 0

Alpaca records ({"instruction", "input", "output"}), one task drawn at random for each:

    reverse    Reverse the letters of the code.          input: "KEMVO"                  -> "OVMEK"
    length     How many letters are in the code?         input: "KEMVO"                  -> "5"
    first      What is the first letter of the code?     input: "KEMVO"                  -> "K"
    last       What is the last letter of the code?      input: "KEMVO"                  -> "O"
    add        What is 27 + 5?                           (no input)                      -> "32"
    larger     Which number is larger?                   input: "27 or 45"               -> "45"
    who        Who is named in the text?                 input: "The kite is with Leo."  -> "Leo"
    what       Which thing is named in the text?         input: "Mia has a cup."         -> "cup"

The codes are made-up strings of 3 to 7 capital letters and the sentences put the name and the
thing in several places, so no task can be answered from memory or by position alone: the model
must read the input (capitals, because bench_instruct.py's tokenizer keeps a run of
them one letter a token). No question is asked twice, so the test set is not in the training
set. The same seed gives the same files.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
NAMES = ["Mia", "Leo", "Ann", "Tom", "Eva", "Sam", "Ivy", "Max", "Zoe", "Ben", "Amy", "Dan"]
THINGS = ["kite", "ball", "hat", "book", "cup", "bike", "coat", "box"]


def word(rng: random.Random) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 7)))


SENTENCES = ["{name} has a {thing}.", "The {thing} is with {name}.", "Look, {name} found a {thing} today.",
             "A {thing} was given to {name}.", "Today the {thing} went home with {name}."]


def sentence(rng: random.Random) -> tuple[str, str, str]:
    """A sentence naming one person and one thing, in one of several word orders (so the answer's
    place in the sentence does not give it away): (sentence, name, thing)."""
    name, what = rng.choice(NAMES), rng.choice(THINGS)
    return rng.choice(SENTENCES).format(name=name, thing=what), name, what


def reverse(rng):
    w = word(rng)
    return "Reverse the letters of the code.", w, w[::-1]


def length(rng):
    w = word(rng)
    return "How many letters are in the code?", w, str(len(w))


def first(rng):
    w = word(rng)
    return "What is the first letter of the code?", w, w[0]


def last(rng):
    w = word(rng)
    return "What is the last letter of the code?", w, w[-1]


def add(rng):
    a, b = rng.randint(10, 99), rng.randint(0, 9)
    return f"What is {a} + {b}?", "", str(a + b)


def larger(rng):
    a, b = rng.sample(range(100), 2)
    return "Which number is larger?", f"{a} or {b}", str(max(a, b))


def who(rng):
    text, name, _ = sentence(rng)
    return "Who is named in the text?", text, name


def what(rng):
    text, _, thing = sentence(rng)
    return "Which thing is named in the text?", text, thing


TASKS = [reverse, length, first, last, add, larger, who, what]


def make(count: int, seed: int) -> list[dict]:
    """`count` different records (no question twice, so none of the test set is in the training
    set), the task of each drawn at random; a record's task is its "task" field (extra fields are
    left alone by the trainer), so results can be broken down by task."""
    rng = random.Random(seed)
    records, seen = [], set()
    while len(records) < count:
        task = rng.choice(TASKS)
        instruction, given, output = task(rng)
        if (instruction, given) not in seen:
            seen.add((instruction, given))
            records.append({"instruction": instruction, "input": given, "output": output, "task": task.__name__})
    return records


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder to write train.jsonl and test.jsonl into")
    parser.add_argument("--count", type=int, default=5000, help="records in all (default 5000); a tenth is the test set")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0)")
    args = parser.parse_args()
    records = make(args.count, args.seed)
    held_out = args.count // 10
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out / "train.jsonl", records[held_out:])
    write_jsonl(args.out / "test.jsonl", records[:held_out])
    print(f"wrote {args.out / 'train.jsonl'} ({args.count - held_out} records) and {args.out / 'test.jsonl'} ({held_out})")


if __name__ == "__main__":
    main()
