import sys

from .phase import main

sys.exit(main())
