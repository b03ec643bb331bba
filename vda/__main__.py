"""`python -m vda`: the `vda` command, as the local backend starts its workers."""

import sys

from vda.cli.main import main

sys.exit(main())
