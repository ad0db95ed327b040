"""`python -m atomr.node`: start a node (see `atomr.node.main`)."""

import sys

from atomr.node.main import main

sys.exit(main())
