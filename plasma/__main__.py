import sys

from plasma.cli import main

sys.exit(main())
