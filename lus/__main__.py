import sys

from lus.cli import main

sys.exit(main())
