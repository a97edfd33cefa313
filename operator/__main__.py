"""``python -m kvol.operator``: the same as ``kvol-operator``."""

import sys

from kvol.operator.main import main

sys.exit(main())
