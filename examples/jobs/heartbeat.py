"""The example's frequent job: records that the edge server is alive (runs every few seconds)."""

import os
import shutil
import sys

usage = shutil.disk_usage(os.environ.get("CROPCRON_DATA_DIR", "."))
print(f"run {sys.argv[1] if len(sys.argv) > 1 else '?'}: disk free {usage.free / 2**30:.1f} GiB")
