"""Entry point of ``bismuth-provider``: a placeholder until a later release ships it."""

from __future__ import annotations

import argparse
import sys

MESSAGE = "bismuth-provider: the provider is not included in this release yet"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bismuth-provider", description=MESSAGE)
    parser.parse_known_args(argv)
    sys.stderr.write(MESSAGE + "\n")
    sys.exit(2)


if __name__ == "__main__":
    main()
