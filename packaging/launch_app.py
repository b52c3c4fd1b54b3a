"""Entry script PyInstaller freezes (the desktop app; ``--self-test`` proves it starts)."""

import sys

from dladiff_app.app import main

if __name__ == "__main__":
    sys.exit(main())
