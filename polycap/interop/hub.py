"""The Hugging Face Hub: a model named by hub id is downloaded (and cached) through
``huggingface_hub``; an exported folder is uploaded with ``--push-to-hub``.

Offline, or with a repository that does not exist, each says so in one line (BadInput); a
model downloaded before is used from the Hub cache without the network.
"""

from __future__ import annotations

import re
from pathlib import Path

from polycap.errors import BadInput, first_line

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def looks_like_hub_id(text: str) -> bool:
    """``owner/name`` that is not a path on this machine."""
    return bool(HUB_ID.match(text)) and not Path(text).exists()


def resolve_model_source(source: str | Path) -> Path:
    """A local path as it is; a hub id (``owner/name``) downloaded into the Hub cache."""
    text = str(source)
    if looks_like_hub_id(text):
        return download(text)
    return Path(source)


def _is_network_error(error: BaseException) -> bool:
    """Offline or unreachable: ``ConnectionError`` (huggingface_hub's offline mode) or an
    httpx/requests connection or transport error."""
    names = {kind.__name__ for kind in type(error).__mro__}
    return isinstance(error, ConnectionError) or bool(
        names & {"ConnectError", "NetworkError", "TransportError", "ConnectTimeout"}
    )


def download(repo_id: str) -> Path:
    """The files of the model ``repo_id`` (snapshot_download: cached, then reused)."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise BadInput(
            f"{repo_id}: not a local folder, and huggingface_hub is not installed to "
            "download it (pip install huggingface_hub)"
        ) from None
    try:
        return Path(snapshot_download(repo_id))
    except LocalEntryNotFoundError:
        raise BadInput(
            f"{repo_id}: not a local folder, and it cannot be downloaded from the Hugging Face "
            "Hub (offline, and not in the Hub cache)"
        ) from None
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError) as error:
        raise BadInput(
            f"{repo_id}: not on the Hugging Face Hub ({first_line(error, 240)})"
        ) from None
    except (OSError, ValueError) as error:
        raise BadInput(f"{repo_id}: download failed ({first_line(error, 240)})") from None


def push(folder: Path, repo_id: str, private: bool = False) -> str:
    """Upload ``folder`` to the model repository ``repo_id`` (created when missing); its URL."""
    if not HUB_ID.match(repo_id):
        raise BadInput(f"--push-to-hub {repo_id!r}: expected owner/name")
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise BadInput("--push-to-hub needs huggingface_hub: pip install huggingface_hub") from None
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            commit_message="polycap export",
        )
    except Exception as error:  # offline, no token, no rights: all one line
        reason = first_line(error, 240)
        if _is_network_error(error) and "offline" not in reason.lower():
            reason = f"offline: cannot reach the Hugging Face Hub; {reason}"
        raise BadInput(f"--push-to-hub {repo_id}: upload failed ({reason})") from None
    return str(getattr(commit, "commit_url", None) or f"https://huggingface.co/{repo_id}")
