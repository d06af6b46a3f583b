"""`python -m capsrun` is the same as the `capsrun` console script."""
import sys

from capsrun.cli import main

sys.exit(main())
