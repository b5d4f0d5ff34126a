"""`python -m podnet.cli`: how the lab, the tests and a re-run inside a lab start it."""

import sys

from podnet.cli import main

sys.exit(main())
