"""``python -m toolsim`` is the ``toolsim`` command."""

import sys

from toolsim.cli import main

sys.exit(main())
