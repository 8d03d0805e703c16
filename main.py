"""siar entry point: `python main.py [COMMAND] [--config PATH]` (see `python main.py --help`)."""

import sys

from bot.cli import main

if __name__ == "__main__":
    sys.exit(main())
