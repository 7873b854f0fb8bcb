"""``python -m bayling_duplex.serve``: see :mod:`bayling_duplex.cli.serve`."""

from bayling_duplex.cli.serve import main

main()
