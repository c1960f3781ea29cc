"""``python -m recstream.encoders.export``: see the package's doc."""

import sys

from recstream.encoders.export import main

sys.exit(main())
