"""``python -m olbproxy`` is the ``olbproxy`` command."""

import sys

from olbproxy.cli import main

sys.exit(main())
