"""``python -m bayling_duplex.infer``: see :mod:`bayling_duplex.cli.infer`."""

import sys

from bayling_duplex.cli.infer import main

if __name__ == "__main__":
    sys.exit(main())
