"""``python -m bayling_duplex.data``: see :mod:`bayling_duplex.cli.data`."""

from bayling_duplex.cli.data import main

main()
