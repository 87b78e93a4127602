"""Run the Copy stage on a LocalCluster from a real process (so a test can SIGKILL it midway).

usage: python engine_script.py SRC OUT DELAY
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from copystage import Copy

from mmdata.config import EngineConfig
from mmdata.engine import map_shards
from mmdata.store import ShardSet

if __name__ == "__main__":
    src, out, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    report = map_shards(Copy(delay=delay), ShardSet(src).shards(), out, EngineConfig(n_workers=2, progress=False))
    print(report.summary())
    sys.exit(0 if report.ok else 1)
