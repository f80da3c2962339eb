"""`python -m clip_trl.cli`: the same as the `clip-trl` command."""

import sys

from clip_trl.cli import main

sys.exit(main())
