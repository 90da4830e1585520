"""`python -m ghibli_async --config config.yaml`."""

import sys

from ghibli_async.cli import main

if __name__ == "__main__":
    sys.exit(main())
