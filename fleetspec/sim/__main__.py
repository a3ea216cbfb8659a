"""`python -m fleetspec.sim serve MODEL [flags]`: the sim engine, with `vllm serve`'s argv."""

import sys

from fleetspec.sim import cli

sys.exit(cli.main())
