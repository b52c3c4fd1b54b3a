"""``python -m dladiff_app`` runs the command line."""

import sys

from dladiff_app.cli.main import main

sys.exit(main())
