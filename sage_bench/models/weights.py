"""Finding pretrained weight files: a given path, the local caches, or a download.

Every pretrained weight the framework loads goes through ``resolve_weights``. The order is

1. ``backbone.pretrained=/path/to/file`` when given (the file must exist);
2. the caches where the usual tools put the file: the Hugging Face hub cache (``HF_HOME``,
   ``HF_HUB_CACHE``) and, for plain URLs, torch's hub cache (``TORCH_HOME``);
3. a download into those caches, unless ``SAGE_BENCH_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``.

When all fail, ``WeightsNotFoundError`` says where the file may go and how to fetch it on a
machine with internet, so compute nodes without a network can be prepared by hand.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sage_bench.errors import UserError


class WeightsNotFoundError(UserError):
    """Pretrained weights that are neither on this machine nor downloadable from it."""


@dataclass(frozen=True)
class WeightFile:
    """Where one set of pretrained weights is published.

    ``hf_repo``/``hf_filenames``: a Hugging Face hub repository and the file names to try, in
    order; ``url``: a plain download, cached under ``torch.hub.get_dir()/checkpoints``.
    """

    description: str
    hf_repo: str | None = None
    hf_filenames: tuple[str, ...] = field(default_factory=tuple)
    url: str | None = None

    @property
    def url_cache_path(self) -> Path | None:
        if self.url is None:
            return None
        import torch.hub

        return Path(torch.hub.get_dir()) / "checkpoints" / self.url.rsplit("/", 1)[-1]


def offline() -> bool:
    """True when downloads must not be attempted (``SAGE_BENCH_OFFLINE`` or ``HF_HUB_OFFLINE``)."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("SAGE_BENCH_OFFLINE", "HF_HUB_OFFLINE"))


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def find_cached(weights: WeightFile) -> Path | None:
    """The weight file if a cache on this machine already holds it."""
    if weights.hf_repo:
        from huggingface_hub import hf_hub_download

        for filename in weights.hf_filenames:
            try:
                return Path(hf_hub_download(weights.hf_repo, filename, local_files_only=True))
            except Exception:  # not cached (the hub raises several kinds of errors)
                continue
    cached = weights.url_cache_path
    if cached is not None and cached.is_file():
        return cached
    return None


def download(weights: WeightFile) -> Path:
    """Download the weights into the usual cache; raises whatever the transfer raises."""
    errors: list[str] = []
    if weights.hf_repo:
        from huggingface_hub import hf_hub_download

        for filename in weights.hf_filenames:
            try:
                return Path(hf_hub_download(weights.hf_repo, filename))
            except Exception as exc:
                errors.append(f"{weights.hf_repo}/{filename}: {type(exc).__name__}: {exc}")
    if weights.url:
        import torch.hub

        target = weights.url_cache_path
        assert target is not None
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(weights.url, str(target), progress=True)
            return target
        except Exception as exc:
            errors.append(f"{weights.url}: {type(exc).__name__}: {exc}")
    raise OSError("; ".join(errors) or "no download source")


def how_to_get(weights: WeightFile) -> str:
    """Instructions for putting the weights on a machine without internet."""
    lines = ["To fetch the file on a machine with internet:"]
    if weights.hf_repo:
        filename = weights.hf_filenames[0]
        lines.append(f"    hf download {weights.hf_repo} {filename} --local-dir weights/")
        lines.append("  (huggingface_hub < 0.34: `huggingface-cli download` with the same arguments)")
    if weights.url:
        lines.append(f"    curl -L -o {weights.url.rsplit('/', 1)[-1]} {weights.url}")
    lines.append("then copy it to this machine and pass backbone.pretrained=/path/to/that/file.")
    if weights.hf_repo:
        folder = "models--" + weights.hf_repo.replace("/", "--")
        lines.append(
            f"Or copy the whole cache folder {folder} from the other machine's Hugging Face cache "
            f"into this machine's ({_hf_cache_dir()}; HF_HOME or HF_HUB_CACHE move it)."
        )
    elif weights.url_cache_path is not None:
        lines.append(f"Or put the file at {weights.url_cache_path} (TORCH_HOME moves it).")
    return "\n".join(lines)


def resolve_weights(weights: WeightFile, pretrained: str | os.PathLike | None = None) -> Path:
    """The local path of ``weights``: ``pretrained`` if given, else a cached copy, else a
    download; ``WeightsNotFoundError`` with instructions when none works."""
    if pretrained is not None:
        path = Path(pretrained).expanduser()
        if path.is_file():
            return path
        raise WeightsNotFoundError(
            f"backbone.pretrained={pretrained}: no such file (the {weights.description} weights).\n"
            + how_to_get(weights)
        )
    cached = find_cached(weights)
    if cached is not None:
        return cached
    where = []
    if weights.hf_repo:
        where.append(f"the Hugging Face cache {_hf_cache_dir()} ({weights.hf_repo})")
    if weights.url_cache_path is not None:
        where.append(str(weights.url_cache_path))
    if offline():
        reason = "downloads are off (SAGE_BENCH_OFFLINE or HF_HUB_OFFLINE is set)"
    else:
        try:
            return download(weights)
        except Exception as exc:  # no network, proxy, quota...: the user must bring the file
            reason = f"the download failed ({exc})"
    raise WeightsNotFoundError(
        f"the {weights.description} weights are not on this machine: looked in "
        f"{' and '.join(where)}, and {reason}.\n" + how_to_get(weights)
    )
