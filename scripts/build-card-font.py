"""Rebuild bot/assets/fonts/SiarCardSans-Bold.ttf, the share cards' bundled font.

One font file for Latin/Greek/Cyrillic/Vietnamese, Arabic and Hebrew, so a right-to-left headline
that quotes Latin words or digits ("G20", "COVID-19") is shaped and ordered by one pass of the
text engine instead of being cut into runs of different fonts. It merges Debian's
fonts-noto-core (SIL Open Font License 1.1, no Reserved Font Name):

    NotoSans-Bold.ttf + NotoSansArabic-Bold.ttf + NotoSansHebrew-Bold.ttf

Hinting is removed first: TrueType instructions call functions of their own font's `fpgm`
table, which a merge cannot keep apart, and cards are drawn at 20-100 px where hinting does not
matter. Run (needs `apt-get install fonts-noto-core` and the dev venv's fontTools):

    python scripts/build-card-font.py [/usr/share/fonts/truetype/noto]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from fontTools import subset
from fontTools.merge import Merger, Options
from fontTools.ttLib import TTFont

SOURCES = ("NotoSans-Bold.ttf", "NotoSansArabic-Bold.ttf", "NotoSansHebrew-Bold.ttf")
OUT = Path(__file__).resolve().parent.parent / "bot" / "assets" / "fonts" / "SiarCardSans-Bold.ttf"
FAMILY = "Siar Card Sans"
DESCRIPTION = (
    "Merged from Noto Sans Bold, Noto Sans Arabic Bold and Noto Sans Hebrew Bold "
    "(Debian fonts-noto-core), hinting removed. Licensed under the SIL Open Font License 1.1."
)


def unhinted(path: Path, folder: Path) -> str:
    """A copy of the font at `path` with every glyph kept and all hinting dropped."""
    options = subset.Options()
    options.hinting = False
    options.glyph_names = True
    options.notdef_outline = True
    options.name_IDs = ["*"]
    options.name_languages = ["*"]
    options.layout_features = ["*"]
    options.drop_tables += ["DSIG"]
    font = TTFont(path)
    subsetter = subset.Subsetter(options)
    subsetter.populate(glyphs=font.getGlyphOrder())
    subsetter.subset(font)
    out = folder / path.name
    font.save(out)
    return str(out)


def main() -> None:
    source_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/fonts/truetype/noto")
    with tempfile.TemporaryDirectory() as tmp:
        parts = [unhinted(source_dir / name, Path(tmp)) for name in SOURCES]
        merged = Merger(options=Options(drop_tables=["vhea", "vmtx"])).merge(parts)
    names = merged["name"]
    for name_id, value in (
        (1, FAMILY),
        (3, "SiarCardSans-Bold;merged Noto 2.004"),
        (4, f"{FAMILY} Bold"),
        (6, "SiarCardSans-Bold"),
        (16, FAMILY),
        (10, DESCRIPTION),
    ):
        names.removeNames(nameID=name_id)
        names.setName(value, name_id, 3, 1, 0x409)
    names.setName("Bold", 2, 3, 1, 0x409)
    names.setName("Copyright 2015-2020 Google LLC. All Rights Reserved.", 0, 3, 1, 0x409)
    # Merging keeps the largest vertical metrics (Arabic's); layout measures real ink instead.
    OUT.parent.mkdir(parents=True, exist_ok=True)
    merged.save(OUT)
    print(f"{OUT}: {OUT.stat().st_size:,} bytes, {len(merged.getBestCmap()):,} characters")


if __name__ == "__main__":
    main()
