import sys

from fleetspec.cli import entry

sys.exit(entry.main())
