"""Reading what W&B wrote for an offline run, for assertions in tests."""
import json
from pathlib import Path


def wandb_records(path: Path):
    """The records of an offline W&B run file (``run-*.wandb``), decoded with W&B's own protobufs.

    The file is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of chunks, each with a
    7-byte header (crc32, little-endian length, type: 1 full, 2 first, 3 middle, 4 last).
    """
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    block, position, pending = 32768, 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # the rest of a block too short for a header is padding
            position += block - position % block
            continue
        length = int.from_bytes(data[position + 4:position + 6], "little")
        kind = data[position + 6]
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        if kind == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def wandb_history(run_folder: Path) -> dict[str, list]:
    """Every logged metric of an offline W&B run: key -> values in logging order."""
    history: dict[str, list] = {}
    (run_file,) = Path(run_folder).glob("run-*.wandb")
    for record in wandb_records(run_file):
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                history.setdefault(key, []).append(json.loads(item.value_json))
    return history


def wandb_run(run_folder: Path) -> tuple[object, dict]:
    """The run record (group, tags, display name) of an offline W&B run, and its config as logged."""
    (run_file,) = Path(run_folder).glob("run-*.wandb")
    run, config = None, {}
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        updates = record.run.config.update if kind == "run" else record.config.update if kind == "config" else []
        config.update({item.key: json.loads(item.value_json) for item in updates})
        if kind == "run" and run is None:
            run = record.run
    return run, config
