"""Hugging Face Hub ids wherever a model or tokenizer is named: `local_dir` turns an id
(`meta-llama/Llama-3.1-8B-Instruct`, at a `revision`) into a folder of the Hugging Face
cache, downloading only what stjax reads (safetensors, config, tokenizer and generation
files), and passes local folders and other locations through unchanged.

The cache is Hugging Face's own (`HF_HOME`, `HF_HUB_CACHE`), so a model fetched with
`hf download` or transformers is found without a network; `HF_HUB_OFFLINE=1` never
touches the network, and a login token (`HF_TOKEN`, `hf auth login`) reaches gated
models. A cached snapshot is used before the network is tried. On a multi-host slice each
host resolves the id into its own cache (the Hub library locks concurrent downloads into a
shared one), or `model.path` names a folder every host can read.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from stjax.errors import UserError

# the files a model folder needs here; weights only as safetensors (no .bin, .pt, .gguf)
HUB_FILES = (
    "*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json",
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "chat_template.jinja", "chat_template.json",
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
ETAG_TIMEOUT_S = 5.0  # an unreachable Hub fails within seconds, not after a minute of retries


class HubError(UserError):
    """A Hub id that cannot be resolved: not cached while offline, unreachable, unknown or gated."""


def push_folder(folder: str | Path, repo_id: str, *, private: bool = False, message: str = "Upload with stjax") -> str:
    """Uploads an export folder to a Hub model repository (created if needed); returns its URL."""
    import huggingface_hub
    from huggingface_hub import errors

    if not _HUB_ID.match(repo_id):
        raise HubError(f"push_to_hub: {repo_id!r} is not a Hub repository id (expected org/name)")
    api = huggingface_hub.HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=message)
    except (errors.HfHubHTTPError, OSError, ValueError) as e:  # offline, no token, no permission
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise HubError(f"push_to_hub {repo_id}: the upload of {folder} failed ({reason}); log in with "
                       "`hf auth login` (or HF_TOKEN) and check the network") from None
    return f"https://huggingface.co/{repo_id}"


def is_hub_id(location: str) -> bool:
    """`org/name` that is not a local path (a folder of that name wins)."""
    return bool(_HUB_ID.match(location)) and ".." not in location and not Path(location).exists()


def local_dir(location: str, revision: str | None = None) -> str:
    """A local folder for `location`: itself unless it is a Hub id, else its snapshot."""
    if not is_hub_id(location):
        return location
    return _snapshot(location, revision)


@functools.lru_cache(maxsize=None)
def _snapshot(repo_id: str, revision: str | None) -> str:
    try:
        import huggingface_hub
        from huggingface_hub import errors
    except ImportError:  # a dependency of transformers: only a broken install lacks it
        raise HubError(f"{repo_id}: a Hub id needs the huggingface_hub package (pip install huggingface_hub), "
                       "or point to a local model folder") from None
    at = f" (no local folder of that name; as a Hub id{' at revision ' + revision if revision else ''})"
    fix = (f"download it first (`hf download {repo_id}{' --revision ' + revision if revision else ''}`) "
           "or point to a local folder")
    try:  # the cache first: no network call when the snapshot is there
        return huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=list(HUB_FILES),
                                                 local_files_only=True)
    except (errors.LocalEntryNotFoundError, FileNotFoundError):
        pass
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise HubError(f"{repo_id}{at}: not in the Hugging Face cache ({huggingface_hub.constants.HF_HUB_CACHE}) "
                       f"and HF_HUB_OFFLINE is set: {fix}")
    try:
        return huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=list(HUB_FILES),
                                                 etag_timeout=ETAG_TIMEOUT_S)
    except errors.GatedRepoError:
        raise HubError(f"{repo_id}{at}: a gated model: accept its license on the Hub and log in (`hf auth login` "
                       "or HF_TOKEN), or point to a local folder") from None
    except errors.RevisionNotFoundError:
        raise HubError(f"{repo_id}{at}: no revision {revision!r} on the Hub (model.revision)") from None
    except errors.RepositoryNotFoundError:
        raise HubError(f"{repo_id}{at}: no such model on the Hub (or a private one: log in with `hf auth login` "
                       "or HF_TOKEN)") from None
    except (errors.LocalEntryNotFoundError, errors.HfHubHTTPError, OSError) as e:
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise HubError(f"{repo_id}{at}: the Hub cannot be reached and the model is not in the Hugging Face cache "
                       f"({reason}): {fix}") from None
