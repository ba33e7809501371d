"""Getting an official checkpoint's tensors: from a local file or the Hugging Face Hub, never
unpickling anything but tensors, plain containers and an explicit allow-list of classes."""
from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

# Classes a training checkpoint may hold besides tensors and containers. hustvl/Vim's checkpoints
# pickle the training script's argparse arguments next to the weights.
SAFE_GLOBALS = [argparse.Namespace]
PICKLE_SUFFIXES = (".pth", ".pt", ".bin")
SUFFIXES = PICKLE_SUFFIXES + (".safetensors",)
HUB_CONNECT_TIMEOUT_S = 3.0
HUB_ETAG_TIMEOUT_S = 5.0
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass(frozen=True)
class ResolvedSource:
    path: Path
    repo_id: str | None = None  # set when the file came from the Hub
    filename: str | None = None
    commit: str | None = None  # the Hub revision the file was taken from, when known


def is_hub_repo_id(source: str) -> bool:
    """``owner/name`` without a weights-file suffix (callers look for a local file first)."""
    return bool(_REPO_ID.fullmatch(source)) and not source.endswith(SUFFIXES)


def hub_offline_setting() -> str | None:
    """Why huggingface_hub is told to stay offline (``HF_HUB_OFFLINE``), or None: read from the
    environment, no connection attempted."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE was set when huggingface_hub was imported"
    return None


def _hub_offline_reason() -> str | None:
    """Why the Hub cannot be reached, or None if it may be. Checked before downloading because
    huggingface_hub retries a failed connection with back-off for ~25 s before giving up."""
    setting = hub_offline_setting()
    if setting is not None:
        return setting
    from huggingface_hub import constants

    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # behind a proxy a direct connection says nothing; let the download try
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=HUB_CONNECT_TIMEOUT_S).close()
    except OSError as error:
        return f"cannot connect to {endpoint.hostname}: {error}"
    return None


def download_from_hub(
    repo_id: str, filenames: tuple[str, ...], arch: str, revision: str | None = None, sha256: str | None = None,
    local_only: bool = False,
) -> ResolvedSource:
    """Download the first of ``filenames`` that ``repo_id`` has at ``revision`` (default: main),
    or take it from the local Hugging Face cache.

    Offline, with no connection to the Hub, or with ``local_only``, only the cache is looked at,
    so this fails within seconds. Read stalls during a download time out after
    ``HF_HUB_DOWNLOAD_TIMEOUT`` seconds (huggingface_hub's setting, default 10). With ``sha256``,
    a file whose digest differs is refused (ValueError). huggingface_hub reports download
    progress through tqdm (the app's progress bar follows it).
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RemoteEntryNotFoundError

    offline = "only the local cache was asked" if local_only else _hub_offline_reason()
    wanted = " or ".join(filenames)
    how_to = (
        f"pass a local file instead: download it from https://huggingface.co/{repo_id} and run "
        f"`python -m effviz import {arch} /path/to/{filenames[0]}`"
    )
    for filename in filenames:
        try:
            path = Path(hf_hub_download(repo_id, filename, revision=revision, etag_timeout=HUB_ETAG_TIMEOUT_S,
                                        local_files_only=offline is not None))
        except LocalEntryNotFoundError as error:  # not cached, and the Hub was not asked or did not answer
            if offline is None:
                raise FileNotFoundError(
                    f"could not download {filename} ({repo_id}) from the Hugging Face Hub: it did not "
                    f"answer ({error.__cause__ or error}); {how_to}"
                ) from error
            continue  # another of the names may be cached
        except RemoteEntryNotFoundError:  # the repo has no such file: try the next name
            continue
        except HfHubHTTPError as error:  # no such repo, gated, server error ...
            raise FileNotFoundError(
                f"could not download {filename} ({repo_id}) from the Hugging Face Hub: "
                f"{str(error).splitlines()[0]}; {how_to}"
            ) from error
        if sha256 is not None and file_sha256(path) != sha256:
            raise ValueError(f"refusing {path}: its sha256 is not the {sha256} recorded for {repo_id}/{filename}")
        # The cache lays files out as .../snapshots/<commit>/<filename>.
        commit = path.parent.name if path.parent.parent.name == "snapshots" else None
        return ResolvedSource(path, repo_id, filename, commit)
    if offline is not None:
        raise FileNotFoundError(
            f"could not download {wanted} ({repo_id}) from the Hugging Face Hub: offline ({offline}), "
            f"and it is not in the local cache; {how_to}"
        )
    raise FileNotFoundError(f"the Hugging Face Hub repo {repo_id} has no {wanted}; {how_to}")


def cached_file(repo_id: str, filenames: tuple[str, ...], revision: str | None = None) -> Path | None:
    """The first of ``filenames`` already in the local Hugging Face cache, without any network call."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        path = try_to_load_from_cache(repo_id, filename, revision=revision)
        if isinstance(path, str):
            return Path(path)
    return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _unsupported_global(error: Exception) -> str | None:
    match = re.search(r"GLOBAL ([\w.]+)", str(error))
    return match.group(1) if match else None


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in a checkpoint file, unwrapped from ``model``/``state_dict`` and a
    ``module.`` (DistributedDataParallel) prefix.

    Pickled files are read with ``weights_only=True`` plus ``SAFE_GLOBALS``: a file that holds any
    other object is refused (ValueError) before that object is built, since building it could
    run arbitrary code.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    if path.suffix == ".safetensors":
        try:
            return unwrap_state_dict(load_file(path), path)
        except SafetensorError as error:
            raise ValueError(f"{path} is not a readable safetensors file: {error}") from error
    if path.suffix not in PICKLE_SUFFIXES:
        raise ValueError(
            f"unsupported checkpoint file type {path.suffix!r} ({path}); expected one of {', '.join(SUFFIXES)}"
        )
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        name = _unsupported_global(error)
        if name is None:
            raise ValueError(f"{path} is not a readable PyTorch checkpoint: {str(error).splitlines()[-1]}") from error
        allowed = ", ".join(f"{cls.__module__}.{cls.__qualname__}" for cls in SAFE_GLOBALS)
        raise ValueError(
            f"refusing to load {path}: it holds a {name} object, and unpickling objects other than "
            f"tensors, plain containers and the allow-listed {allowed} could run arbitrary code. "
            "Use the official file, or re-save its state dict as .safetensors."
        ) from error
    except RuntimeError as error:  # e.g. a truncated zip archive
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {error}") from error
    return unwrap_state_dict(checkpoint, path)


def unwrap_state_dict(checkpoint: object, path: Path) -> dict[str, torch.Tensor]:
    """Training checkpoints keep the weights under ``model`` (DeiT/Vim scripts) or
    ``state_dict`` (mmcls/VRWKV) next to optimiser state and arguments."""
    if isinstance(checkpoint, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(checkpoint.get(key), Mapping):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise ValueError(f"{path} holds no state dict (found {type(checkpoint).__name__})")
    state = dict(checkpoint)
    if all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    not_tensors = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"{path}: state dict entries that are not tensors: {', '.join(map(str, not_tensors[:10]))}")
    return state
