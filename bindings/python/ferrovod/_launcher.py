"""The ``ferrovod-run`` console script: the launcher lives in the extension module, so a pip
install is all a machine needs. ``python -m ferrovod`` is the same command."""

from __future__ import annotations

import sys

from ._ferrovod import launcher_main


def main() -> None:
    sys.exit(launcher_main(["ferrovod-run", *sys.argv[1:]]))


def command() -> list[str]:
    """The argv prefix that starts the launcher from this Python."""
    return [sys.executable, "-m", "ferrovod"]


if __name__ == "__main__":
    main()
