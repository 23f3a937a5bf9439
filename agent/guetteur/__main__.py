import sys

from guetteur.cli import main

sys.exit(main())
