"""Publishing a ``save_pretrained`` folder on the Hugging Face Hub through ``HfApi`` (``create_repo`` +
``upload_folder``), with the teacher's licence deciding the default visibility.

Only the folder's known artifacts are uploaded (never a teacher's weights, whatever else lies in the folder).
``private=None`` means private when any teacher forbids commercial use or its terms are unknown, public otherwise;
publishing a non-commercial-teacher student publicly needs an explicit ``private=False``. The endpoint is read
from ``HF_ENDPOINT`` when the call is made (so a local server can stand in for the Hub), the token from ``token=``
or the usual ``HF_TOKEN`` / login. Nothing in the local folder is changed, whatever the Hub answers.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from robust_student.students.io import read_student_config

from .card import is_non_commercial
from .pretrained import ARTIFACTS, CARD

logger = logging.getLogger(__name__)


class HubError(RuntimeError):
    """The Hub refused or failed an upload; the message says what it answered and what to do."""


def endpoint() -> str | None:
    """``HF_ENDPOINT`` as it is now (huggingface_hub reads it only once, when it is imported)."""
    value = os.environ.get("HF_ENDPOINT")
    return value.rstrip("/") if value else None


def default_private(config: dict[str, Any]) -> bool:
    """Private unless every teacher's licence is known to allow commercial use."""
    return is_non_commercial(config) is not False


def push_to_hub(directory: str | Path, repo_id: str, *, private: bool | None = None, token: str | None = None,
                commit_message: str | None = None) -> str:
    """Upload a ``save_pretrained`` folder to ``repo_id`` (``org/name``) and return the commit URL.

    ``private``: None picks from the teachers' licences (see the module docstring). Raises :class:`HubError`
    with the Hub's answer (401: the token; 403: rights on the namespace; 5xx: try again) when the upload fails.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    directory = Path(directory)
    config = read_student_config(directory)
    if not (directory / CARD).is_file():
        raise FileNotFoundError(f"{directory} has no {CARD} model card: write the folder with save_pretrained")
    if "/" not in repo_id or repo_id.count("/") != 1:
        raise ValueError(f"repo_id must look like org/name, got {repo_id!r}")
    non_commercial = is_non_commercial(config)
    if private is None:
        private = default_private(config)
        logger.info("pushing %s as a %s repository (%s)", repo_id, "private" if private else "public",
                    "the teacher's licence forbids commercial use" if non_commercial else
                    "the teacher's licence is unknown" if non_commercial is None else "the teacher allows it")
    elif not private and non_commercial:
        logger.warning("publishing %s publicly although its teacher's licence is non-commercial: the model card "
                       "says so, and its users inherit those terms", repo_id)
    api = HfApi(endpoint=endpoint(), token=token)
    files = [name for name in ARTIFACTS if (directory / name).is_file()]
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(repo_id=repo_id, folder_path=directory, allow_patterns=files,
                                   commit_message=commit_message or f"Upload robust student ({', '.join(files)})")
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        hint = {401: "the token was refused: pass token= or set HF_TOKEN (hf auth login)",
                403: f"the token may not write to {repo_id.split('/')[0]}"}.get(
            status, "the Hub failed: try again later" if status and status >= 500 else "see the Hub's answer")
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise HubError(f"upload of {directory} to {repo_id} failed ({status or 'no status'}: {first_line}); "
                       f"{hint}. Nothing was changed locally.") from None
    return str(commit)


__all__ = ["push_to_hub", "default_private", "HubError", "endpoint"]
