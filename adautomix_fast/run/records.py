"""Reading and rewriting a run's records: ``log.jsonl`` and ``summary.csv``.

Both files are appended to while a run trains, so a process killed mid-write (or a full disk)
can leave a torn last line. Every reader goes through these functions, which drop such a line
instead of failing, and a resumed run rewrites both files to end at its checkpoint
(`truncate_after`), so that an epoch trained again after a failed save is recorded once.
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Optional


def read_jsonl(path: str) -> list[dict]:
    """The records of a JSON-lines file; a line that does not parse as a JSON object (a torn
    last line) is dropped. A missing file has no records."""
    if not os.path.isfile(path):
        return []
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def read_csv_rows(path: str) -> list[dict]:
    """The rows of a CSV file with a header line; a row with fewer cells than the header, or one
    not ended by a newline (a torn last line), is dropped. A missing file has no rows."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        text = f.read()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]   # the unfinished last line
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        return []
    return [dict(zip(header, row)) for row in reader if len(row) == len(header)]


def number(value) -> Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def truncate_after(folder: str, epoch: int, step: int) -> int:
    """Rewrite ``folder``'s log.jsonl and summary.csv to hold only what the checkpoint at
    (completed ``epoch``, global ``step``) had seen: epoch records up to ``epoch``, training
    records up to ``step``, and no torn line. Returns the number of records dropped."""
    dropped = 0
    log = os.path.join(folder, "log.jsonl")
    if os.path.isfile(log):
        with open(log, encoding="utf-8", errors="replace") as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            kind = record.get("type") if isinstance(record, dict) else None
            past = ((kind == "epoch" and (number(record.get("epoch")) or 0) > epoch)
                    or (kind == "train" and (number(record.get("step")) or 0) > step))
            if past:
                dropped += 1
            else:
                kept.append(line)
        if len(kept) != len(lines):
            _atomic_write_text(log, "".join(line + "\n" for line in kept))
    summary = os.path.join(folder, "summary.csv")
    if os.path.isfile(summary):
        with open(summary, newline="", encoding="utf-8", errors="replace") as f:
            original = f.read()
        rows = list(csv.reader(io.StringIO(original[: original.rfind("\n") + 1] if original else "")))
        if rows:
            header, body = rows[0], rows[1:]
            col = header.index("epoch") if "epoch" in header else None
            keep = [r for r in body if len(r) == len(header)
                    and (col is None or (number(r[col]) or 0) <= epoch)]
            dropped += len(body) - len(keep) + (0 if original.endswith("\n") else 1)
            out = io.StringIO()
            w = csv.writer(out, lineterminator="\r\n")   # csv.DictWriter's default line ending
            w.writerow(header)
            w.writerows(keep)
            if out.getvalue() != original:
                _atomic_write_text(summary, out.getvalue())
    return dropped


__all__ = ["read_csv_rows", "read_jsonl", "truncate_after"]
