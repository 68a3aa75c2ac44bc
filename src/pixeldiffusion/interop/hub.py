"""The Hugging Face Hub, through huggingface_hub (extra `hub`), imported when first used.

A repository is read with `snapshot_download`, so HF_ENDPOINT, HF_HUB_CACHE and HF_HUB_OFFLINE=1 (the local cache
only) behave as for any Hub library; only JSON and safetensors files are fetched, never pickles.
"""

from __future__ import annotations

from pathlib import Path

from pixeldiffusion.errors import PixelDiffusionError

CHECKPOINT = "pixeldiffusion.safetensors"  # our own checkpoint in a pushed repository
PATTERNS = ["*.json", "*.safetensors"]  # what loading needs; *.bin pickles are never fetched


def _client():
    """The huggingface_hub module and its errors module (which it does not import eagerly)."""
    try:
        import huggingface_hub
        from huggingface_hub import errors
    except ImportError as e:
        raise PixelDiffusionError("the Hub needs huggingface_hub: pip install 'pixeldiffusion[hub]'") from e
    return huggingface_hub, errors


def download(repo: str) -> Path:
    """The local snapshot of a Hub repository, user/repo or user/repo@revision, from the cache or the Hub."""
    hf, errors = _client()
    repo_id, _, revision = repo.partition("@")
    try:
        return Path(hf.snapshot_download(repo_id, revision=revision or None, allow_patterns=PATTERNS))
    except errors.LocalEntryNotFoundError as e:
        raise PixelDiffusionError(
            f"hf://{repo} is not in the local cache, and the Hub is offline (HF_HUB_OFFLINE) or unreachable"
        ) from e
    except errors.RepositoryNotFoundError as e:
        raise PixelDiffusionError(
            f"no Hub repository {repo_id} (or it is private: log in with `hf auth login`)"
        ) from e
    except errors.RevisionNotFoundError as e:
        raise PixelDiffusionError(f"the Hub repository {repo_id} has no revision {revision}") from e
    except (errors.HFValidationError, errors.HfHubHTTPError, OSError) as e:
        raise PixelDiffusionError(f"cannot download hf://{repo}: {str(e).splitlines()[0]}") from e


def upload(folder: Path, repo: str, *, private: bool = False, message: str) -> str:
    """Upload a folder's files to the Hub repository `repo` (created if needed); returns the repository's URL."""
    hf, errors = _client()
    api = hf.HfApi()
    try:
        url = api.create_repo(repo, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=folder, commit_message=message)
    except (errors.HFValidationError, errors.HfHubHTTPError, OSError) as e:
        raise PixelDiffusionError(f"cannot push to hf://{repo}: {str(e).splitlines()[0]}") from e
    return str(url)
