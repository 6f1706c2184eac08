"""A job's artifacts as image sources for the page: data: URIs (one self-contained file), or files beside it.

Why a class: a page must know which artifacts it showed (the rest go under "Other figures"), which failed to
fetch (listed with why) and where each is first shown (the artifact table links there).
"""

from __future__ import annotations

import base64
import re
from html import escape
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from sdk.result import artifact_path

if TYPE_CHECKING:
    from sdk.result import Result

IMAGE_TYPES = {".png": "image/png", ".gif": "image/gif", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


class Assets:
    """Artifact bytes of one job as image sources: data: URIs, or files beside the page."""

    def __init__(self, result: "Result", page: Path, embed: bool, prefix: str = "") -> None:
        self.result = result
        self.page = page
        self.embed = embed
        self.prefix = prefix
        self.by_name = {a.name: a for a in result.artifacts}
        self.used: set[str] = set()
        self.failed: dict[str, str] = {}
        self.anchors: dict[str, str] = {}  # artifact name -> id of the element that first shows it
        self.files: dict[str, str] = {}  # artifact name -> its file beside the page (embed=False)
        self.inlined = 0  # bytes of non-image artifacts embedded as download links

    def names(self, task: str, pattern: str = r".*") -> list[str]:
        """Artifact names of `task` matching `pattern` (a regex on the whole name), in name order."""
        rx = re.compile(pattern)
        return sorted(n for n, a in self.by_name.items() if a.task == task and rx.fullmatch(n))

    def is_image(self, name: str) -> bool:
        return PurePosixPath(name).suffix.lower() in IMAGE_TYPES

    def src(self, name: str) -> str | None:
        if name not in self.by_name:
            return None
        self.used.add(name)
        if not self.embed:
            relative = artifact_path(name)
            if relative is None:
                self.failed[name] = "refused: the artifact name leaves the job's folder"
                return None
        try:
            data = self.result.read_artifact(name)
        except Exception as exc:  # noqa: BLE001 - any failure to fetch is reported on the page
            self.failed[name] = f"{type(exc).__name__}: {exc}"
            return None
        if self.embed:
            media = IMAGE_TYPES.get(PurePosixPath(name).suffix.lower(), "application/octet-stream")
            return f"data:{media};base64,{base64.b64encode(data).decode('ascii')}"
        return self.write_beside(name, relative, data)

    def write_beside(self, name: str, relative: PurePosixPath, data: bytes) -> str:
        beside = self.page.parent / f"{self.page.stem}_files" / self.result.id / relative
        beside.parent.mkdir(parents=True, exist_ok=True)
        beside.write_bytes(data)
        self.files[name] = beside.relative_to(self.page.parent).as_posix()
        return self.files[name]

    def img(self, name: str | None, alt: str = "", cls: str = "") -> str:
        """An <img> of artifact `name`, or a note saying why there is none."""
        if not name:
            return '<span class="missing">—</span>'
        src = self.src(name)
        if src is None:
            why = self.failed.get(name, "not among the job's artifacts")
            return f'<span class="missing" title="{escape(why)}">{escape(PurePosixPath(name).name)} unavailable</span>'
        anchor = ""
        if name not in self.anchors:
            self.anchors[name] = f"{self.prefix}art-{len(self.anchors) + 1}"
            anchor = f' id="{self.anchors[name]}"'
        return f'<img src="{escape(src)}" alt="{escape(alt or name)}" title="{escape(name)}" class="{cls}"{anchor}>'

