"""``python -m bismuth_fe``: the same as the ``bismuthfe`` command."""

from .main import main

main()
