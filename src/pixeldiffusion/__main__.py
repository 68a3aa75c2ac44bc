import sys

from pixeldiffusion.cli import main

sys.exit(main())
