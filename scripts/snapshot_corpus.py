"""Write course/assets/pydoc_topics.txt.gz from this Python's pydoc_data.topics.

The course reads the snapshot, not the live module, because the topics text changes between
CPython releases and notebooks (and committed weights) must not. Run: python scripts/snapshot_corpus.py
"""
import gzip
import platform
from pathlib import Path

import pydoc_data.topics as topics

text = "\n\n".join(topics.topics[key] for key in sorted(topics.topics))
out = Path(__file__).resolve().parent.parent / "course" / "assets" / "pydoc_topics.txt.gz"
# mtime=0 keeps the file byte-identical across runs
with open(out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
    f.write(text.encode("utf-8"))
print(f"wrote {out} ({len(text)} characters from Python {platform.python_version()})")
