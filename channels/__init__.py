"""One module per platform; `bot.registry` maps a config `type` to its module."""
