"""Image processing stand-in: computes simple statistics for every image in the incoming folder
and writes a JSON report. Real deployments call their photogrammetry/detection tools here."""

import argparse
import hashlib
import json
import sys
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--session", required=True, help="morning | noon | evening")
parser.add_argument("--run-id", required=True)
parser.add_argument("--incoming", default="data/incoming")
parser.add_argument("--out", default="data/reports")
args = parser.parse_args()

incoming = Path(args.incoming)
incoming.mkdir(parents=True, exist_ok=True)
images = sorted(p for p in incoming.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".tif", ".tiff"})
summary = {"session": args.session, "run_id": args.run_id, "images": len(images), "files": []}
for path in images:
    data = path.read_bytes()
    summary["files"].append({"name": path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
(out / f"images-{args.session}-{args.run_id}.json").write_text(json.dumps(summary, indent=2))
print(f"{args.session}: processed {len(images)} images")
sys.exit(0)
