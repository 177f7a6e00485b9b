import sys

from gradselect.cli import main

sys.exit(main())
