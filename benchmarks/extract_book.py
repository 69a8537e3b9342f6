"""Cut one book out of ../shared/data/gutenberg_en.txt (113 books, joined one after another), for a
training run on a text that chose none of the recipe's settings.

    python benchmarks/extract_book.py pride.txt     # Pride and Prejudice (the default), about 199 KB

The book runs from its title line to the credit line ("Produced by ...") of the book after it.
"""

import argparse
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "gutenberg_en.txt"


def extract(text: str, title: str) -> str:
    """The book whose title line is `title`: from that line to the next book's credit line."""
    start = text.find(f"\n{title}\n")
    if start < 0:
        sys.exit(f"extract_book: no line {title!r} in {DATA}")
    end = text.find("\n\n\nProduced by", start)
    return text[start + 1 : end if end > 0 else len(text)].rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="where to write the book")
    parser.add_argument("--title", default="PRIDE AND PREJUDICE", help="the book's title line, as the text has it")
    args = parser.parse_args()
    book = extract(DATA.read_text(encoding="utf-8"), args.title)
    args.out.write_text(book, encoding="utf-8")
    print(f"wrote {args.out}: {len(book):,} characters, {len(book.encode()):,} bytes")


if __name__ == "__main__":
    main()
