import sys

from vsrt.cli import main

sys.exit(main())
