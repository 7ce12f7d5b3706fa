"""Backbones by name: a local file, `hf://OWNER/REPO/FILE[@REVISION]`, or a known name (KNOWN_BACKBONES).

`resolve_backbone(spec)` turns what a user wrote into a local file plus what the registry knows about it
(format, model config, dataset); `zsad.load_backbone` calls it first, so every entry point accepts all three.
Files a name needs are looked up in the zsad cache folder (ZSAD_CACHE, default ~/.cache/zsad/backbones)
before they are downloaded; Hugging Face files live in the Hugging Face cache. Offline or failed lookups
raise BackboneLoadError saying which file is missing, where it comes from and where to put it.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from zsad.errors import BackboneLoadError

_TRUE = {"1", "ON", "YES", "TRUE"}
_CHUNK = 1 << 20


@dataclass(frozen=True)
class BackboneEntry:
    """A known backbone: where its file comes from and how to build the network around it."""

    format: str  # "zsad" | "improved-diffusion"
    config: Any  # improved-diffusion preset name (zsad.diffusion.improved_diffusion.PRESETS), or None
    source: str  # hf://OWNER/REPO/FILE[@REVISION], an https:// URL, or a path relative to the current directory
    sha256: Optional[str] = None  # only where the real hash is known; otherwise it is printed on first download
    trained_on: Optional[str] = None
    alternatives: tuple[str, ...] = ()  # further local paths, tried in order after `source`
    description: str = ""

    @property
    def filename(self) -> str:
        """The file's own name (what the zsad cache stores it as)."""
        path = parse_hf(self.source).filename if self.source.startswith("hf://") else self.source
        return path.rsplit("/", 1)[-1]


KNOWN_BACKBONES: dict[str, BackboneEntry] = {
    # DiffPath's README publishes its CelebA-32 EMA weights on the Hugging Face Hub.
    "diffpath-celeba32": BackboneEntry(
        format="improved-diffusion", config="diffpath-celeba32", source="hf://ajrheng/diffpath/celeba_ema_0.9999_499999.pt", trained_on="celeba",
        description="DiffPath's CelebA 32x32 model (EMA 0.9999, step 499999)",
    ),
    # openai/improved-diffusion README, "Models and hyperparameters".
    "openai-imagenet64": BackboneEntry(
        format="improved-diffusion", config="openai-imagenet64",
        source="https://openaipublic.blob.core.windows.net/diffusion/march-2021/imagenet64_uncond_100M_1500K.pt", trained_on="imagenet",
        description="OpenAI improved-diffusion's unconditional ImageNet 64x64 model (100M parameters, 1.5M steps)",
    ),
    # What `zsad demo` trains (zsad.demo.run_demo); the quick demo writes to demo_quick.
    "zsad-demo": BackboneEntry(
        format="zsad", config=None, source="outputs/demo/train/checkpoints/last.ckpt", trained_on="shapes",
        alternatives=("outputs/demo_quick/train/checkpoints/last.ckpt",), description="the model `zsad demo` trains, under ./outputs/",
    ),
}


@dataclass(frozen=True)
class ResolvedBackbone:
    """A backbone spec made concrete: the local file and what the registry says about it."""

    path: Path
    format: str = "auto"  # "auto" | "zsad" | "improved-diffusion"
    config: Any = None  # preset name or None
    name: Optional[str] = None  # the registry name, when the spec was one (or its hf:// source)
    source: str = ""  # what the user asked for, or the URL the file came from
    sha256: Optional[str] = None  # the registry's known hash, if any
    trained_on: Optional[str] = None


@dataclass(frozen=True)
class HubRef:
    """One file of a Hugging Face model repo, at a revision (None: the default branch)."""

    repo_id: str
    filename: str
    revision: Optional[str] = None

    @property
    def spec(self) -> str:
        """The hf:// form."""
        return f"hf://{self.repo_id}/{self.filename}" + (f"@{self.revision}" if self.revision else "")

    @property
    def url(self) -> str:
        """Where the Hub serves the file."""
        return f"https://huggingface.co/{self.repo_id}/resolve/{self.revision or 'main'}/{self.filename}"


def zsad_cache_dir() -> Path:
    """The folder named backbones are looked up in and downloaded to (ZSAD_CACHE, default ~/.cache/zsad/backbones)."""
    return Path(os.path.expandvars(os.path.expanduser(os.environ.get("ZSAD_CACHE") or "~/.cache/zsad/backbones")))


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (huggingface_hub reads it once, at import)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(os.path.expanduser(explicit)))
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    return Path(os.path.expandvars(os.path.expanduser(home))) / "hub"


def is_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now; zsad's own URL downloads honour it too."""
    return any((os.environ.get(k) or "").upper() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def parse_hf(spec: str) -> HubRef:
    """`hf://OWNER/REPO/FILE[@REVISION]` (FILE may contain slashes) as its parts."""
    # `Path("hf://a/b/c")` collapses the double slash: accept what a str(Path) round trip made of it.
    body = spec[len("hf://"):] if spec.startswith("hf://") else spec[len("hf:/"):]
    body, at, revision = body.rpartition("@") if "@" in body else (body, "", "")
    parts = body.strip("/").split("/", 2)
    if len(parts) < 3 or not all(parts) or (at and not revision):
        raise BackboneLoadError(f"'{spec}' is not a Hugging Face file: write hf://OWNER/REPO/FILE or hf://OWNER/REPO/FILE@REVISION (a branch, tag or commit).")
    return HubRef(f"{parts[0]}/{parts[1]}", parts[2], revision or None)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def resolve_backbone(spec: str | os.PathLike) -> ResolvedBackbone:
    """A local path, `hf://OWNER/REPO/FILE[@REVISION]` or a known name (KNOWN_BACKBONES) as a local file."""
    text = os.fspath(spec)
    if text.startswith("hf:/"):
        ref = parse_hf(text)
        name, entry = _entry_for(ref)
        path = _hf_download(ref, sha256=entry.sha256 if entry else None, label=name or ref.spec)
        if entry is None:
            return ResolvedBackbone(path=path, source=ref.spec)
        return ResolvedBackbone(path, entry.format, entry.config, name, ref.spec, entry.sha256, entry.trained_on)
    if "://" in text:
        raise BackboneLoadError(
            f"'{text}': zsad downloads only hf://OWNER/REPO/FILE[@REVISION] and the known names ({', '.join(KNOWN_BACKBONES)}). "
            "Download the file yourself and pass its local path."
        )
    if Path(text).is_file():  # an existing file always means itself, even if it is named like a backbone
        return ResolvedBackbone(path=Path(spec), source=text)
    key = text.strip().lower().replace("_", "-")
    if key in KNOWN_BACKBONES:
        return _resolve_entry(key, KNOWN_BACKBONES[key])
    if "/" not in text and "\\" not in text and not Path(text).suffix:
        close = difflib.get_close_matches(key, KNOWN_BACKBONES, n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        known = "; ".join(f"{n} ({e.description})" for n, e in KNOWN_BACKBONES.items())
        raise BackboneLoadError(
            f"'{text}' is neither a file nor a known backbone name.{hint} Known names: {known}. "
            "Otherwise pass a checkpoint path (.ckpt/.pt) or hf://OWNER/REPO/FILE[@REVISION]."
        )
    return ResolvedBackbone(path=Path(spec), source=text)  # a missing local path: safe_load reports it as before


def _entry_for(ref: HubRef) -> tuple[Optional[str], Optional[BackboneEntry]]:
    """The registry entry an hf:// spec names (same repo and file; a pinned revision must agree if the entry pins one)."""
    for name, entry in KNOWN_BACKBONES.items():
        if entry.source.startswith("hf://"):
            known = parse_hf(entry.source)
            if (known.repo_id, known.filename) == (ref.repo_id, ref.filename) and known.revision in (None, ref.revision):
                return name, entry
    return None, None


def _resolve_entry(name: str, entry: BackboneEntry) -> ResolvedBackbone:
    made = lambda path, source: ResolvedBackbone(Path(path), entry.format, entry.config, name, source, entry.sha256, entry.trained_on)
    if not entry.source.startswith(("hf://", "https://", "http://")):
        candidates = [entry.source, *entry.alternatives]
        found = next((c for c in candidates if Path(c).is_file()), None)
        if found is None:
            hint = "Run `zsad demo` (or `zsad demo --quick`) in this folder first, or pass the checkpoint's path." if name == "zsad-demo" else ""
            where = f"none of {', '.join(candidates)} exists under {Path.cwd()}."
            raise BackboneLoadError(f"Backbone {name} ({entry.description}) not found: {where} {hint}".rstrip())
        return made(found, found)
    # A file put into the zsad cache by hand (an offline machine) is used before any download.
    cached = zsad_cache_dir() / entry.filename
    if cached.is_file():
        if entry.sha256:
            _check_sha256(cached, entry.sha256, name)
        return made(cached, entry.source)
    if entry.source.startswith("hf://"):
        ref = parse_hf(entry.source)
        return made(_hf_download(ref, entry.sha256, label=name, entry=(name, entry)), entry.source)
    return made(_url_download(entry.source, cached, entry.sha256, name, entry), entry.source)


def _put_it_here(name: str, entry: BackboneEntry) -> str:
    config = f" backbone.config={entry.config}" if entry.config else ""
    return (
        f"Download it on a machine with network and copy it to {zsad_cache_dir() / entry.filename} (zsad looks there first; ZSAD_CACHE sets the folder), "
        f"or pass its local path instead of the name: backbone.path=PATH/{entry.filename} backbone.format={entry.format}{config} "
        f"(in Python: zsad.load_backbone(PATH, format='{entry.format}'" + (f", config='{entry.config}'" if entry.config else "") + "))."
    )


def _hf_download(ref: HubRef, sha256: Optional[str], label: str, entry: Optional[tuple[str, BackboneEntry]] = None) -> Path:
    """hf_hub_download into the Hugging Face cache (a pinned revision when given); errors become BackboneLoadError."""
    import huggingface_hub
    from huggingface_hub.utils import EntryNotFoundError, HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    cache, offline = hf_cache_dir(), is_offline()
    kwargs = dict(repo_id=ref.repo_id, filename=ref.filename, revision=ref.revision, cache_dir=str(cache))
    try:
        was_cached = isinstance(huggingface_hub.try_to_load_from_cache(**kwargs), str)  # only a new download shows its hash
        path = Path(huggingface_hub.hf_hub_download(**kwargs, local_files_only=offline))
    except Exception as err:  # noqa: BLE001 - every hub/network failure is a user error with the same remedy
        if isinstance(err, HFValidationError):
            raise BackboneLoadError(f"'{ref.spec}': {ref.repo_id} is not a valid Hugging Face repo id ({err}).") from None
        if isinstance(err, LocalEntryNotFoundError) or not isinstance(err, (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError)):
            why = (
                "offline mode (HF_HUB_OFFLINE=1) and the file is not in the Hugging Face cache" if offline
                else f"no network or the Hub did not answer ({type(err).__name__})"
            )
        elif isinstance(err, RevisionNotFoundError):
            why = f"the repo has no revision '{ref.revision}'"
        elif isinstance(err, RepositoryNotFoundError):
            why = "the repo does not exist, or it is private/gated (log in with `hf auth login`)"
        else:
            why = "the repo has no such file"
        if entry is not None:
            todo = _put_it_here(*entry)
        else:
            rev = f" --revision {ref.revision}" if ref.revision else ""
            todo = (f"Fetch it where there is network (`hf download {ref.repo_id} {ref.filename}{rev}`) into the Hugging Face cache {cache} "
                    "(HF_HUB_CACHE/HF_HOME set the folder), or download it and pass its local path instead.")
        raise BackboneLoadError(
            f"Backbone {label}: cannot get {ref.filename} from the Hugging Face Hub repo {ref.repo_id} ({ref.spec}, {ref.url}): {why}. {todo}"
        ) from None
    if sha256:
        _check_sha256(path, sha256, label)
    elif not was_cached:
        _announce(label, file_sha256(path), path)
    return path


def _url_download(url: str, dest: Path, sha256: Optional[str], name: str, entry: BackboneEntry) -> Path:
    """Stream `url` to a temporary file beside `dest`, check it, then rename: `dest` is whole or absent."""
    import urllib.request

    if is_offline():
        raise BackboneLoadError(
            f"Backbone {name}: {dest.name} is not in {dest.parent} and offline mode (HF_HUB_OFFLINE=1) forbids downloading it from {url}. "
            + _put_it_here(name, entry)
        )
    from zsad.utils.console import say

    say(f"downloading backbone {name} from {url} → {dest}")
    tmp = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        digest, size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            expected = int(response.headers.get("Content-Length") or 0)
            with _byte_bar(expected, dest.name) as bar:
                while block := response.read(_CHUNK):
                    out.write(block)
                    digest.update(block)
                    size += len(block)
                    bar.update(len(block))
        if expected and size != expected:
            raise OSError(f"the transfer stopped after {size} of {expected} bytes")
        got = digest.hexdigest()
        if sha256 and got != sha256.lower():
            raise BackboneLoadError(
                f"Backbone {name}: the file downloaded from {url} has sha256 {got}, but the known file has {sha256}. "
                "It was deleted. Run again to retry; if the published file changed, download it yourself and pass its local path."
            )
        os.replace(tmp, dest)  # atomic in one folder: nothing half-written ever has the final name
        tmp = None
    except BackboneLoadError:
        raise
    except Exception as err:  # noqa: BLE001 - urllib/http/OS errors: the remedy is the same
        raise BackboneLoadError(f"Backbone {name}: downloading {url} to {dest} failed ({type(err).__name__}: {err}). {_put_it_here(name, entry)}") from None
    finally:
        if tmp is not None:  # any error, KeyboardInterrupt included
            Path(tmp).unlink(missing_ok=True)
    if not sha256:
        _announce(name, got, dest)
    return dest


def _byte_bar(total: int, desc: str):
    from tqdm.auto import tqdm

    from zsad.utils.console import progress_enabled

    return tqdm(total=total or None, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress_enabled(), mininterval=0.5)


def _announce(label: str, digest: str, path: Path) -> None:
    from zsad.utils.console import say

    say(f"backbone {label}: sha256 {digest} ({path})")  # no known hash to check against: show it once, to compare later


def _check_sha256(path: Path, expected: str, label: str) -> None:
    """Refuse a cached file whose hash is not the known one, and delete it (it can be downloaded again)."""
    got = file_sha256(path)
    if got == expected.lower():
        return
    target = path.resolve()  # the Hugging Face cache links snapshots/<commit>/FILE to blobs/<etag>: remove both
    path.unlink(missing_ok=True)
    if target != path:
        target.unlink(missing_ok=True)
    raise BackboneLoadError(
        f"Backbone {label}: {path} has sha256 {got}, but the known file has sha256 {expected}. It was deleted; run again to download it again. "
        "If you trust that file, pass its local path (with format/config) instead."
    )
