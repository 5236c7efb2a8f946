"""``python -m saekit`` runs the command line."""

import sys

from saekit.cli import main

sys.exit(main())
