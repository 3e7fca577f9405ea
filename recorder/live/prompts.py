"""The prompt catalog: which prompt files exist, in which languages, and their SHA-256.

Layout: ``<prompt dir>/<language>/<prompt id>.wav`` (8 kHz mono 16-bit), e.g.
``prompts/de/consent.wav``. ``callconsent prompts build`` writes them; admins may replace any
file with their own recording. The digest of the file a caller heard goes into the consent
evidence, so the catalog hashes each file when it is loaded and again when it changes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from consent_ivr.policy import PROMPT_IDS


@dataclass(frozen=True, slots=True)
class PromptFile:
    prompt_id: str
    language: str
    path: Path
    sha256: str
    mtime_ns: int
    size: int


class PromptCatalog:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._files: dict[tuple[str, str], PromptFile] = {}
        self.reload()

    def reload(self) -> None:
        """Re-scan the directory; re-hash only files whose size or mtime changed."""
        found: dict[tuple[str, str], PromptFile] = {}
        if self.directory.is_dir():
            for lang_dir in sorted(p for p in self.directory.iterdir() if p.is_dir()):
                for prompt_id in PROMPT_IDS:
                    path = lang_dir / f"{prompt_id}.wav"
                    if not path.is_file():
                        continue
                    st = path.stat()
                    key = (prompt_id, lang_dir.name)
                    old = self._files.get(key)
                    if old and (old.mtime_ns, old.size) == (st.st_mtime_ns, st.st_size):
                        found[key] = old
                    else:
                        found[key] = PromptFile(
                            prompt_id,
                            lang_dir.name,
                            path.absolute(),
                            _sha256(path),
                            st.st_mtime_ns,
                            st.st_size,
                        )
        self._files = found

    @property
    def languages(self) -> set[str]:
        """Languages that have the full set of prompts."""
        by_lang: dict[str, set[str]] = {}
        for prompt_id, lang in self._files:
            by_lang.setdefault(lang, set()).add(prompt_id)
        return {lang for lang, ids in by_lang.items() if ids >= set(PROMPT_IDS)}

    def get(self, prompt_id: str, language: str) -> PromptFile | None:
        """The file for a prompt; ``None`` if it is missing (the adapter reports PromptFailed)."""
        return self._files.get((prompt_id, language))

    def missing(self, language: str) -> list[str]:
        return [p for p in PROMPT_IDS if (p, language) not in self._files]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW)) as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()
