"""``python -m bayling_duplex.eval``: see :mod:`bayling_duplex.cli.eval`."""

from bayling_duplex.cli.eval import main

main()
