"""``python -m ferrovod ARGS`` is ``ferrovod-run ARGS``."""

from ferrovod._launcher import main

main()
