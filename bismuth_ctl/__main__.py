"""``python -m bismuth_ctl``: the same as the ``bismuthctl`` console script."""

import sys

from bismuth_ctl.main import main

sys.exit(main())
