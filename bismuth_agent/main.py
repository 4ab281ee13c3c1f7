"""Entry point of ``bismuthd``: a placeholder until the agent ships in a later release."""

from __future__ import annotations

import argparse
import sys

MESSAGE = "bismuthd: the agent is not included in this release yet"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bismuthd", description=MESSAGE)
    parser.parse_known_args(argv)
    sys.stderr.write(MESSAGE + "\n")
    sys.exit(2)


if __name__ == "__main__":
    main()
