"""`python -m otlp_ingest ...`: see otlp_ingest.cli."""

import sys

from otlp_ingest.cli import main

if __name__ == "__main__":
    sys.exit(main())
