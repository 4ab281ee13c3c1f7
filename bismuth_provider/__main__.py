"""``python -m bismuth_provider``."""

from .main import main

main()
