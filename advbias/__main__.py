"""``python -m advbias ...`` behaves exactly like the ``advbias`` command."""
import sys

from advbias.cli import main

sys.exit(main())
