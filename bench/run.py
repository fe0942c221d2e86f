#!/usr/bin/env python3
# SPDX-License-Identifier: ISC
"""Run every bench/bench_*.py in turn (make bench); exit 1 if any target failed."""

import glob
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv):
    chosen = argv[1:] or sorted(glob.glob(os.path.join(HERE, "bench_*.py")))
    failed = []
    for script in chosen:
        print("=== %s" % os.path.basename(script), flush=True)
        if subprocess.run([sys.executable, script]).returncode != 0:
            failed.append(os.path.basename(script))
    if failed:
        print("targets missed or errors in: %s" % " ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
