from ..cli import leave
from .phase import main

leave(main())
