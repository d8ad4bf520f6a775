"""`python -m graphc ...` is the `graphc` command (for an environment whose scripts directory is not on PATH)."""

import sys

from graphc.cli import main

sys.exit(main())
