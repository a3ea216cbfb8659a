import sys

from fleetspec.cli import app

sys.exit(app.main())
