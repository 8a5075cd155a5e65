"""``python -m sae_bilinear.cli``: the same as the ``sae-bilinear`` command."""

import sys

from sae_bilinear.cli import main

sys.exit(main())
