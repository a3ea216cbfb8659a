"""`python -m fleetspec.router serve --config FILE [--host H] [--port N]`: run the router."""

import sys

from fleetspec.router import cli

sys.exit(cli.main())
