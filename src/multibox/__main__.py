"""``python -m multibox``: the command line."""

import sys

from multibox.cli import main

sys.exit(main())
