"""Meta's platforms through the Graph APIs: `type = "facebook"` (a Page post), `"instagram"`
(the share card with a caption) and `"threads"` (a text post with a link preview, or the card).

One package so that they share one Graph client, error mapping, token watch and card serving
(sibling channel modules never import each other). The `[cards]` section (the look of share
cards, `bot.cards.CardSettings`) is read here, where cards are published.
"""

from bot.cards import CardSettings
from bot.registry import Plugin
from channels.meta import facebook, instagram, threads

PLUGIN = Plugin(
    "meta",
    (facebook.TYPE, instagram.TYPE, threads.TYPE),
    sections={"cards": CardSettings},
)
