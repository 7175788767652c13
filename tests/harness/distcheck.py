"""What pip installed, checked where it was installed (the EE image, a plain virtualenv)."""

from __future__ import annotations

# Run by the interpreter under test, prints JSON: for every installed distribution that has a
# RECORD, the files whose content differs from the hash it lists, and how many files were checked.
RECORD_SCRIPT = r"""
import base64, csv, hashlib, importlib.metadata as md, json, os
bad, counts = [], {}
for dist in md.distributions():
    record = dist.read_text("RECORD")
    if record is None:  # Debian's python3-* packages: apt's business, not pip's
        continue
    name = dist.metadata["Name"]
    counts[name] = 0
    for path, digest, _size in csv.reader(record.splitlines()):
        if not digest:
            continue
        full = os.path.join(str(dist.locate_file("")), path)
        algo, _, want = digest.partition("=")
        with open(full, "rb") as f:
            got = base64.urlsafe_b64encode(hashlib.new(algo, f.read()).digest()).rstrip(b"=").decode()
        counts[name] += 1
        if got != want:
            bad.append(f"{name}: {path}")
print(json.dumps({"bad": bad, "counts": counts}))
"""
