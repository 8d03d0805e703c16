"""siar: news feeds to social platforms, each story exactly once."""

__version__ = "0.1.0"
