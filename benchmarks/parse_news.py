"""Parse cost per feed: each real news feed of shared/corpus/news through `parse_feed`.

Prints CPU milliseconds per parse of every file and the mean over the files, so that a change
to normalization (encoding repair, patterns) can be compared before/after.

    SIAR_CORPUS=/work/shared/corpus .venv/bin/python benchmarks/parse_news.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.cleaning import CleaningRules
from bot.normalize import parse_feed

CORPUS = Path(os.environ.get("SIAR_CORPUS", Path(__file__).resolve().parents[2] / "shared" / "corpus"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    rules = CleaningRules(drop_paragraphs=["^Simak berita menarik lainnya"])  # as config.toml
    files = sorted(p for p in (CORPUS / "news").rglob("*") if p.suffix in (".xml", ".rss", ".atom"))
    if not files:
        sys.exit(f"no news feeds under {CORPUS / 'news'}; set SIAR_CORPUS")
    total = 0.0
    for path in files:
        body = path.read_bytes()
        parse_feed(body, "https://news.example/feed", {}, rules, "news")  # warm caches
        started = time.process_time()
        for _ in range(args.rounds):
            parsed = parse_feed(body, "https://news.example/feed", {}, rules, "news")
        per = (time.process_time() - started) / args.rounds * 1000
        total += per
        print(f"{per:8.2f} ms  {len(parsed.stories):3d} stories  {path.relative_to(CORPUS)}")
    print(f"{total / len(files):8.2f} ms  mean per feed ({len(files)} feeds, {args.rounds} rounds)")


if __name__ == "__main__":
    main()
