"""Share cards: milliseconds per card and peak memory, per card size and kind of photo.

Each case runs in a fresh process (peak RSS only grows), reads its photo from a file, renders 3
warm-up cards (fonts loaded), then N timed ones; "+ render" is the peak RSS growth from the
first card on (decoded photo, card, fonts). Photos are generated: a 1600×1067 JPEG (a typical
feed image), a 4000×3000 JPEG (decoded at reduced scale), a 2400×1600 PNG (PNG has no reduced
decoding), and none (the plain branded card).

    .venv/bin/python benchmarks/cards.py [--cards 20]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TITLE = (
    "Presiden Jokowi Minta Menteri Percepat Penyaluran Bantuan Sosial bagi Korban Banjir Bandang "
    "di Kabupaten Luwu Utara, Sulawesi Selatan"
)
PHOTOS = {
    "jpeg_1600": (1600, 1067, "JPEG"),
    "jpeg_4000": (4000, 3000, "JPEG"),
    "png_2400": (2400, 1600, "PNG"),
    "none": None,
}


def photo(spec: tuple[int, int, str] | None) -> bytes | None:
    from PIL import Image, ImageFilter

    if spec is None:
        return None
    width, height, fmt = spec
    image = Image.merge("RGB", [Image.effect_noise((width, height), 60 + 20 * i) for i in range(3)])
    out = io.BytesIO()
    image.filter(ImageFilter.GaussianBlur(2)).save(out, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return out.getvalue()


def peak_rss_kib() -> int:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def run_case(size: tuple[int, int], path: str, cards: int) -> dict[str, float]:
    from bot.cards import CardSettings, render_card

    data = Path(path).read_bytes() or None

    settings = CardSettings()
    before = peak_rss_kib()
    for _ in range(3):
        render_card(TITLE, "Nasional", "tempo.co", data, size, settings, language="id")
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(cards):
        render_card(f"{TITLE} {i}", "Nasional", "tempo.co", data, size, settings, language="id")
    wall = (time.perf_counter() - started) / cards * 1000
    cpu_ms = (time.process_time() - cpu) / cards * 1000
    peak = peak_rss_kib()
    return {"ms": wall, "cpu_ms": cpu_ms, "peak_mib": peak / 1024, "render_mib": (peak - before) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cards", type=int, default=20)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        width, height, path = args.case.split(":", 2)
        print(json.dumps(run_case((int(width), int(height)), path, args.cards)))
        return
    folder = Path(tempfile.mkdtemp(prefix="siar-cards-"))
    for kind, spec in PHOTOS.items():
        (folder / kind).write_bytes(photo(spec) or b"")
    print(f"{'size':>9}  {'photo':<10} {'ms/card':>8} {'cpu ms':>7} {'peak RSS':>9} {'+ render':>9}")
    for size in ((1080, 1350), (1200, 630)):
        for kind in PHOTOS:
            case = f"{size[0]}:{size[1]}:{folder / kind}"
            out = subprocess.run(
                [sys.executable, __file__, "--case", case, "--cards", str(args.cards)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            r = json.loads(out)
            print(
                f"{size[0]}×{size[1]:<4}  {kind:<10} {r['ms']:8.1f} {r['cpu_ms']:7.1f} "
                f"{r['peak_mib']:7.0f} MiB {r['render_mib']:6.0f} MiB"
            )


if __name__ == "__main__":
    main()
