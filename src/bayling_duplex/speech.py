"""``python -m bayling_duplex.speech``: see :mod:`bayling_duplex.cli.speech`."""

import sys

from bayling_duplex.cli.speech import main

if __name__ == "__main__":
    sys.exit(main())
