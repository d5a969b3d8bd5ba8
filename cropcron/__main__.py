import sys

from cropcron.cli import main

sys.exit(main())
