"""Share cards: a story's headline on its photo, as newsrooms post them (Instagram, previews).

Usage: `render_card(story.title, story.section, site.name, photo_bytes, INSTAGRAM_PORTRAIT,
settings, language=story.language)` gives the card as JPEG bytes.
"""

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
from bot.cards.settings import CardColors, CardSettings

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
