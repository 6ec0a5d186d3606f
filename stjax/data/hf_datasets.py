"""Training data from Hugging Face `datasets`: a Hub dataset id (`trl-lib/Capybara`), or a
local folder laid out like one (data files under it), at a split, subset and revision, with
the rows turned into `Conversation`s by stjax.data.formats (after `columns` renames).

Offline use goes through the datasets cache as usual (`HF_DATASETS_OFFLINE=1`, `HF_HOME`).
`datasets` is an optional extra: `pip install 'stjax[datasets]'`.
"""

from __future__ import annotations

from collections.abc import Mapping

from stjax.data.formats import records_to_conversations
from stjax.data.records import Conversation, DataError
from stjax.errors import MissingExtra


def hf_conversations(name: str, *, split: str = "train", subset: str | None = None, revision: str | None = None,
                     columns: Mapping[str, str] | None = None, without_input: bool = False) -> list[Conversation]:
    """The rows of a `datasets` split as conversations; errors name the dataset, split and row."""
    try:
        import datasets
    except ImportError as e:
        raise MissingExtra(f"data source hf: {name}: Hugging Face datasets need the extra: "
                           f"pip install 'stjax[datasets]' ({e})") from e
    where = f"{name}{'/' + subset if subset else ''}:{split}"
    try:
        rows = datasets.load_dataset(name, subset, split=split, revision=revision)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as e:  # no such dataset / split, offline
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise DataError(f"data source hf: {where}: cannot be loaded ({reason}); check the id, split and subset, "
                        "or download it first (HF_DATASETS_OFFLINE=1 reads only the cache)") from None
    triples = ((row, f"{where}#{i}", f"{where}#{i}") for i, row in enumerate(rows))
    return records_to_conversations(triples, columns=columns, without_input=without_input)
