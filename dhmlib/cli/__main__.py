import sys

from dhmlib.cli import main

sys.exit(main())
