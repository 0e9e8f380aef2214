"""``python -m deploy.localstack``: see :mod:`deploy.localstack.cli`."""

import sys

from .cli import main

sys.exit(main())
