"""Nightly backup: copies the reports folder into a dated tar.gz, keeping the last N archives."""

import argparse
import tarfile
import time
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--source", default="data/reports")
parser.add_argument("--dest", default="data/backups")
parser.add_argument("--keep", type=int, default=7)
args = parser.parse_args()

source, dest = Path(args.source), Path(args.dest)
source.mkdir(parents=True, exist_ok=True)
dest.mkdir(parents=True, exist_ok=True)
archive = dest / f"reports-{time.strftime('%Y%m%d-%H%M%S')}.tar.gz"
with tarfile.open(archive, "w:gz") as tar:
    tar.add(source, arcname="reports")
archives = sorted(dest.glob("reports-*.tar.gz"))
for old in archives[: -args.keep]:
    old.unlink()
print(f"backup written: {archive} ({archive.stat().st_size} bytes); kept {min(len(archives), args.keep)}")
