"""`python -m dreamsculpt ...` is the `dreamsculpt` command."""

import sys

from .cli import main

sys.exit(main())
