"""A `vllm` executable for sim images: `vllm serve MODEL ...` runs the fleetspec sim.

Installed as /usr/local/bin/vllm in the sim container image, so a container built from the compiled
production argv (`vllm serve ...`) runs unchanged. Kept free of console-script machinery: a
one-line wrapper (`#!/usr/bin/env python3` + `from fleetspec.sim.vllm_shim import main; main()`)
or `python -m fleetspec.sim.vllm_shim` both work.
"""

from __future__ import annotations

import sys


def main() -> None:
    from fleetspec.sim import cli

    sys.exit(cli.main(sys.argv[1:]))


if __name__ == "__main__":
    main()
