"""Entry script of the bundle's command line (``dladiff``), frozen next to the desktop app."""

import sys

from dladiff_app.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
