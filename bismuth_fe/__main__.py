"""``python -m bismuth_fe``: the same as the ``bismuthfe`` command."""

import sys

from .main import main

sys.exit(main())
