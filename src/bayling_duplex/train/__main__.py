"""``python -m bayling_duplex.train``: see :mod:`bayling_duplex.cli.train`."""

from bayling_duplex.cli.train import main

main()
