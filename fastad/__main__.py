import sys

from fastad.cli import main

sys.exit(main())
