"""``python -m fleet_planner_cli`` is ``fleet-planner``."""

import sys

from fleet_planner_cli import main

sys.exit(main())
