"""Read what an offline W&B run logged, straight from its `run-<id>.wandb` transaction log.

The file is W&B's LevelDB-style log: a 7-byte header (":W&B", magic 0xBEE1, version), then 32 KiB
blocks of chunks (crc32 uint32, length uint16, type uint8: 1 full, 2 first, 3 middle, 4 last), each
record a serialized `wandb_internal_pb2.Record`. Used by tests and by users to inspect a run before
`wandb sync`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Iterator

BLOCK = 32768
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _records(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    pos, pending = 7, b""
    while pos + CHUNK_HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < CHUNK_HEADER:  # block tail is zero padding
            pos += room
            continue
        _crc, length, kind = struct.unpack_from("<IHB", data, pos)
        body = data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind == FULL:
            yield body
        elif kind == FIRST:
            pending = body
        elif kind == MIDDLE:
            pending += body
        elif kind == LAST:
            yield pending + body
            pending = b""
        elif kind == 0 and length == 0:
            break  # unwritten tail
        else:
            raise ValueError(f"{path}: unexpected chunk type {kind} at byte {pos}")


def _value(item) -> Any:
    return json.loads(item.value_json)


def _put(target: dict, item) -> None:
    """Store one item; a nested key (a media or table value split into fields) becomes nested dicts."""
    path = [item.key] if item.key else list(item.nested_key)
    for part in path[:-1]:
        target = target.setdefault(part, {})
    target[path[-1]] = _value(item)


def read_offline_run(run_dir: str | Path) -> dict:
    """`{"run_id", "config", "history": [row dicts], "summary": dict, "exit_code", "files"}` of one run folder."""
    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    logs = sorted(run_dir.glob("run-*.wandb"))
    if not logs:
        raise FileNotFoundError(f"No run-*.wandb file in {run_dir}")
    out: dict[str, Any] = {"run_id": None, "config": {}, "history": [], "summary": {}, "exit_code": None, "files": []}
    for raw in _records(logs[0]):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["run_id"] = rec.run.run_id
            for item in rec.run.config.update:
                _put(out["config"], item)
        elif kind == "config":
            for item in rec.config.update:
                _put(out["config"], item)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in rec.history.item:
                _put(row, item)
            out["history"].append(row)
        elif kind == "summary":
            for item in rec.summary.update:
                _put(out["summary"], item)
        elif kind == "files":
            out["files"] += [f.path for f in rec.files.files]
        elif kind == "exit":
            out["exit_code"] = rec.exit.exit_code
    for key in ("value",):
        out["config"] = {k: (v.get(key, v) if isinstance(v, dict) and set(v) <= {"value", "desc"} else v) for k, v in out["config"].items()}
    return out


def find_offline_runs(root: str | Path) -> list[Path]:
    """Offline run folders under `root` (e.g. an output_dir), oldest first."""
    return sorted(Path(root).glob("**/wandb/offline-run-*"), key=lambda p: p.name)


def logged_keys(run: dict) -> set[str]:
    """Every history key of a run read by `read_offline_run`."""
    return {k for row in run["history"] for k in row}
