"""Generations cached per item on disk, so evaluation resumes and judges rerun for free.

Each benchmark has a JSONL file of {key, id, prompt, output, ended} records, appended and synced
after every batch. `key` hashes everything that determines an output (model and adapter
files, tokenizer, generation settings); a record counts only for the same key and the same
prompt text. An interrupted run therefore loses at most one batch, a rerun with a new
judge generates nothing, and changed settings regenerate without deleting anything.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from collections.abc import Callable, Sequence

from stjax.evaluation.benchmarks import Item
from stjax.generation import Reply


def directory_fingerprint(path: str | Path) -> str:
    """Names, sizes and modification times of a directory's files: cheap for a 16 GB
    checkpoint, and changed by any re-export (stjax writes exports as new directories)."""
    path = Path(path)
    entries = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in path.iterdir() if f.is_file())
    return hashlib.sha256(json.dumps([str(path.resolve()), entries]).encode()).hexdigest()[:16]


def settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


class GenerationCache:
    def __init__(self, path: str | Path, key: str):
        self.path, self.key = Path(path), key

    def read(self, items: Sequence[Item]) -> dict[str, Reply]:
        """id -> cached reply, for the items whose record has this key and prompt (records
        written before replies carried `ended` are regenerated: a judge needs it)."""
        prompts = {item.id: item.prompt for item in items}
        found = {}
        if not self.path.is_file():
            return found
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by an interruption
                continue
            if (record.get("key") == self.key and prompts.get(record.get("id")) == record.get("prompt")
                    and isinstance(record.get("ended"), bool)):
                found[record["id"]] = Reply(record["output"], record["ended"])
        return found

    def append(self, items: Sequence[Item], outputs: Sequence[Reply]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+", encoding="utf-8") as f:
            f.seek(0, os.SEEK_END)
            if f.tell():  # terminate a line an interruption cut short
                f.seek(f.tell() - 1)
                if f.read(1) != "\n":
                    f.write("\n")
            f.writelines(json.dumps({"key": self.key, "id": item.id, "prompt": item.prompt, "output": output.text,
                                     "ended": output.ended}) + "\n"
                         for item, output in zip(items, outputs, strict=True))
            f.flush()
            os.fsync(f.fileno())


def cached_generate(
    items: Sequence[Item],
    cache: GenerationCache,
    generate_batch: Callable[[list[str]], list[Reply]],
    *,
    batch_size: int,
    progress: bool = True,
    desc: str = "generate",
) -> list[Reply]:
    """Replies for all items, generating (in batches of similar prompt length) only the
    ones the cache lacks."""
    from tqdm.auto import tqdm

    done = cache.read(items)
    missing = sorted((item for item in items if item.id not in done), key=lambda item: len(item.prompt))
    with tqdm(total=len(items), initial=len(items) - len(missing), desc=desc, unit="item",
              disable=not progress) as bar:
        for start in range(0, len(missing), batch_size):
            batch = missing[start:start + batch_size]
            outputs = generate_batch([item.prompt for item in batch])
            cache.append(batch, outputs)
            done.update((item.id, output) for item, output in zip(batch, outputs))
            bar.update(len(batch))
    return [done[item.id] for item in items]
