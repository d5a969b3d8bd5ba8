"""Per-flight job (on_batch): read the batch manifest cropcron wrote, check every file is still
there with the announced size, and write a flight index (count, bytes, per extension, the file
list) to <out>/<batch id>.json: the input a photogrammetry step would start from.

    run: ["{python}", jobs/flight_summary.py, --out, data/flights, --, "{batch.manifest}"]

The manifest (docs/watcher-dispatch.md) lists the batch's files; paths that are not UTF-8 come
with `path_b64`, the exact bytes. Exit 1 if a file went missing (the run is retried)."""

from __future__ import annotations

import argparse
import base64
import collections
import json
import os
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("manifest")
    args = parser.parse_args()
    with open(args.manifest, encoding="utf-8") as f:
        manifest = json.load(f)
    by_ext: collections.Counter[str] = collections.Counter()
    total, missing = 0, []
    for item in manifest["files"]:
        path = base64.b64decode(item["path_b64"]) if "path_b64" in item else os.fsencode(item["path"])
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            missing.append(item["rel_path"])
            continue
        if size != item["size"]:
            missing.append(item["rel_path"])
        total += size
        by_ext[os.path.splitext(item["rel_path"])[1].lower() or "(none)"] += 1
    index = {"batch_id": manifest["batch_id"], "watch": manifest["watch"], "folder": manifest["folder"],
             "partial": manifest["partial"], "closed_because": manifest["reason"], "files": manifest["count"],
             "bytes": total, "by_extension": dict(by_ext), "missing": missing,
             "refused": manifest.get("refused", []), "rel_paths": [f["rel_path"] for f in manifest["files"]]}
    os.makedirs(args.out, exist_ok=True)
    target = os.path.join(args.out, f"{manifest['batch_id']}.json")
    with open(target + ".tmp", "w", encoding="utf-8") as out:
        json.dump(index, out, indent=1)
    os.replace(target + ".tmp", target)
    print(f"flight {manifest['folder'] or '(root)'}: {manifest['count']} files, {total} bytes"
          f"{' (partial)' if manifest['partial'] else ''} -> {target}")
    if missing:
        print(f"{len(missing)} file(s) missing or changed: {missing[:5]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
