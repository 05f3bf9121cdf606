"""``python -m vision_rs`` runs the command line (also under ``torchrun -m vision_rs``)."""

import sys

from .cli import main

sys.exit(main())
