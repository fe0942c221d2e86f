#!/usr/bin/env python3
# SPDX-License-Identifier: ISC
"""Run every bench/bench_*.py in turn (make bench); exit 1 if any target failed.

The scripts share one make install into a temporary prefix ($BENCH_PREFIX).
"""

import glob
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import install_prefix  # noqa: E402


def main(argv):
    chosen = argv[1:] or sorted(glob.glob(os.path.join(HERE, "bench_*.py")))
    failed = []
    # One make install for every script (removed at exit, unless given).
    env = dict(os.environ, BENCH_PREFIX=install_prefix())
    for script in chosen:
        print("=== %s" % os.path.basename(script), flush=True)
        if subprocess.run([sys.executable, script], env=env).returncode != 0:
            failed.append(os.path.basename(script))
    if failed:
        print("targets missed or errors in: %s" % " ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
