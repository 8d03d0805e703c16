"""The `[cards]` config section: whether share cards are made, and how they look."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bot.paths import resolve_path

_HEX = re.compile(r"^#([0-9a-fA-F]{6})$")

RGB = tuple[int, int, int]


def hex_to_rgb(value: str) -> RGB:
    """`#rrggbb` as an (r, g, b) tuple."""
    return int(value[1:3], 16), int(value[3:5], 16), int(value[5:7], 16)


class CardColors(BaseModel):
    """Colours as `#rrggbb`. The gradient darkens the photo under the text: 0 = none, 1 = opaque."""

    model_config = ConfigDict(extra="forbid")

    background: str = "#0d2140"  # plain cards, and behind transparent photos
    text: str = "#ffffff"
    accent: str = "#ffc21a"  # the section label's box
    gradient: str = "#000000"
    gradient_strength: float = Field(default=0.88, ge=0.0, le=1.0)

    @field_validator("background", "text", "accent", "gradient")
    @classmethod
    def _hex_colour(cls, value: str) -> str:
        if not _HEX.match(value):
            raise ValueError(f'{value!r} is not a colour; write it as #rrggbb, e.g. "#0d2140"')
        return value.lower()


class CardSettings(BaseModel):
    """Share cards (a headline on the story's photo). `logo` and `font` are paths, relative to
    the config file until `resolved()`; empty `font` = the bundled font, empty `logo` = the site
    name is written instead; empty `site_name` = the name the caller passes (the site's)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    logo: str = ""
    font: str = ""
    site_name: str = ""
    colors: CardColors = CardColors()

    @field_validator("logo")
    @classmethod
    def _png_logo(cls, value: str) -> str:
        if value and not value.lower().endswith(".png"):
            raise ValueError(f"{value!r}: the logo must be a PNG file (with transparency, ideally)")
        return value

    @field_validator("font")
    @classmethod
    def _font_file(cls, value: str) -> str:
        if value and not value.lower().endswith((".ttf", ".otf", ".ttc", ".otc")):
            raise ValueError(f"{value!r}: the font must be a TrueType/OpenType file (.ttf, .otf, .ttc)")
        return value

    def resolved(self, config_dir: Path) -> CardSettings:
        """A copy whose `logo` and `font` are absolute, relative ones taken from `config_dir`."""

        def absolute(value: str) -> str:
            if not value:
                return value
            path = Path(value).expanduser()
            return str(resolve_path(path, config_dir))

        return self.model_copy(update={"logo": absolute(self.logo), "font": absolute(self.font)})
