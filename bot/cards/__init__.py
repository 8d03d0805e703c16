"""Share cards: a story's headline on its photo, as newsrooms post them (Instagram, previews).

Usage: `render_card(story.title, story.section, site.name, photo_bytes, INSTAGRAM_PORTRAIT,
settings, language=story.language)` gives the card as JPEG bytes.

`CardSettings` (the `[cards]` section) is light; the drawing (Pillow, fontTools: ~6 MiB) is
imported on first use, so a daemon that renders no cards never loads it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bot.cards.settings import CardColors, CardSettings

if TYPE_CHECKING:
    from bot.cards.compose import (
        INSTAGRAM_PORTRAIT,
        LINK_PREVIEW,
        CardLayout,
        check_card_settings,
        layout_card,
        render_card,
    )
    from bot.cards.fonts import CardFontError
    from bot.cards.photo import PhotoRefused, decode_photo

_LAZY = {
    "INSTAGRAM_PORTRAIT": "compose",
    "LINK_PREVIEW": "compose",
    "CardLayout": "compose",
    "check_card_settings": "compose",
    "layout_card": "compose",
    "render_card": "compose",
    "CardFontError": "fonts",
    "PhotoRefused": "photo",
    "decode_photo": "photo",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "INSTAGRAM_PORTRAIT",
    "LINK_PREVIEW",
    "CardColors",
    "CardFontError",
    "CardLayout",
    "CardSettings",
    "PhotoRefused",
    "check_card_settings",
    "decode_photo",
    "layout_card",
    "render_card",
]
