"""``python -m colu ...`` is the ``colu`` command (so ``torchrun -m colu run ...`` works without the script)."""

import sys

from colu.tools.cli import main

sys.exit(main())
