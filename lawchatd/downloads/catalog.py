"""The model catalog: which files a variant name stands for, with their exact size and hash."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from lawchatd.errors import LawchatdError, UserError

_VARIANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,254}$")
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class CatalogError(LawchatdError):
    """A catalog that could not be used, with the reason in words."""


@dataclass(frozen=True)
class ModelSpec:
    variant: str
    repo: str
    filename: str
    size: int
    sha256: str | None = None
    revision: str = "main"
    label: str = ""
    gguf: bool = True  # the file must be a GGUF model (a mirror's other LFS files are not)


_LAW_CHAT = "TheBloke/law-chat-GGUF"

BUILTIN: tuple[ModelSpec, ...] = (
    ModelSpec("law-chat-q2_k", _LAW_CHAT, "law-chat.Q2_K.gguf", 2825945536,
              "09833e9b20aadd4f10e2c6504d5f15239e6f221b32306169486aa7e3d40b837c",
              label="Q2_K, smallest, lowest quality"),
    ModelSpec("law-chat-q3_k_m", _LAW_CHAT, "law-chat.Q3_K_M.gguf", 3298009952,
              "b187e19700192f8752499324ff037c57accb2e571f590190c92aec1e3bac50ed",
              label="Q3_K_M, small"),
    ModelSpec("law-chat-q4_0", _LAW_CHAT, "law-chat.Q4_0.gguf", 3825812864,
              "9f3794e5149684e9d5df7eb3748b9a06cf256cc20c362be3a97eb4dc5f55fbdb",
              label="Q4_0, recommended"),
    ModelSpec("law-chat-q5_0", _LAW_CHAT, "law-chat.Q5_0.gguf", 4651698048,
              "4f3716c962be02c6e332bdca45b3ae8f5a73b4b6444b9f86c16cc97e978ae331",
              label="Q5_0, higher quality"),
    ModelSpec("law-chat-q8_0", _LAW_CHAT, "law-chat.Q8_0.gguf", 7161098592,
              "2ffe14e73c765ac31742736454869760f08d6ad34848c838e6a4419c53903ae5",
              label="Q8_0, largest, near lossless"),
)  # fmt: skip


class UnknownVariant(UserError):
    code = "model_not_found"

    def __init__(self, variant: str, known: list[str]) -> None:
        super().__init__(f"Unknown model variant {variant!r}; available: {', '.join(known)}")


class Catalog:
    """Variants by name, in catalog order."""

    def __init__(self, specs: tuple[ModelSpec, ...] | list[ModelSpec]) -> None:
        self._by_variant: dict[str, ModelSpec] = {}
        filenames: set[str] = set()
        for spec in specs:
            _check_spec(spec)
            if spec.variant in self._by_variant:
                raise CatalogError(f"variant {spec.variant!r} appears twice")
            if spec.filename in filenames:
                raise CatalogError(f"filename {spec.filename!r} appears twice")
            filenames.add(spec.filename)
            self._by_variant[spec.variant] = spec
        if not self._by_variant:
            raise CatalogError("the catalog lists no models")

    def __iter__(self):
        return iter(self._by_variant.values())

    def __contains__(self, variant: object) -> bool:
        return variant in self._by_variant

    def get(self, variant: str) -> ModelSpec | None:
        return self._by_variant.get(variant)

    def require(self, variant: str) -> ModelSpec:
        """The spec of ``variant``; UnknownVariant (naming the known ones) if there is none."""
        if (spec := self._by_variant.get(variant)) is None:
            raise UnknownVariant(variant, self.variants)
        return spec

    @property
    def variants(self) -> list[str]:
        return list(self._by_variant)


def _check_spec(spec: ModelSpec) -> None:
    where = f"catalog entry {spec.variant!r}"
    # Variant and filename become paths and URLs: refuse anything that could leave models/.
    if not isinstance(spec.variant, str) or not _VARIANT.match(spec.variant):
        raise CatalogError(f"variant {spec.variant!r}: use letters, digits, '.', '_' or '-' only")
    if (
        not isinstance(spec.filename, str)
        or not _FILENAME.match(spec.filename)
        or ".." in spec.filename
    ):
        raise CatalogError(
            f"{where}: filename {spec.filename!r} must be a plain file name "
            "(no '/', '\\', '..' or leading dot) so it stays inside the models folder"
        )
    if spec.filename.endswith(".part"):
        raise CatalogError(f"{where}: filename must not end in .part")
    if not isinstance(spec.repo, str) or not _REPO.match(spec.repo) or ".." in spec.repo:
        raise CatalogError(f"{where}: repo {spec.repo!r} must look like 'owner/name'")
    if (
        not isinstance(spec.revision, str)
        or not _REVISION.match(spec.revision)
        or ".." in spec.revision
    ):
        raise CatalogError(f"{where}: revision {spec.revision!r} is not a branch, tag or commit")
    if not isinstance(spec.size, int) or isinstance(spec.size, bool) or spec.size <= 0:
        raise CatalogError(f"{where}: size must be a positive number of bytes")
    if spec.sha256 is not None and not (
        isinstance(spec.sha256, str) and _SHA256.match(spec.sha256)
    ):
        raise CatalogError(f"{where}: sha256 must be 64 lowercase hex digits")


_FIELDS = {"variant", "repo", "filename", "revision", "size", "sha256", "label"}


def load_catalog(path: Path | None) -> Catalog:
    """The built-in catalog, or the TOML file at `path` that replaces it."""
    if path is None:
        return Catalog(BUILTIN)
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise CatalogError(f"cannot read catalog {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"catalog {path} is not valid TOML: {exc}") from exc
    entries = data.get("models")
    if not isinstance(entries, list):
        raise CatalogError(f"catalog {path} needs a [[models]] table array")
    specs = []
    for number, entry in enumerate(entries, start=1):
        unknown = set(entry) - _FIELDS
        if unknown:
            raise CatalogError(f"catalog {path}, model {number}: unknown keys {sorted(unknown)}")
        missing = {"variant", "repo", "filename", "size"} - set(entry)
        if missing:
            raise CatalogError(f"catalog {path}, model {number}: missing {sorted(missing)}")
        sha = entry.get("sha256")
        specs.append(
            ModelSpec(
                variant=entry["variant"],
                repo=entry["repo"],
                filename=entry["filename"],
                size=entry["size"],
                sha256=sha.lower() if isinstance(sha, str) else sha,
                revision=entry.get("revision", "main"),
                label=entry.get("label", ""),
            )
        )
    return Catalog(specs)
