"""`python -m benchmarks [--quick]` (what `make bench` runs): same as `python -m benchmarks.run`."""

import sys

from benchmarks.run import main

sys.exit(main())
