"""The download engine in small parts; README "Layout" says which module owns what."""

from lawchatd.fetch.errors import DownloadFailed, describe
from lawchatd.fetch.partial import final_path, part_path
from lawchatd.fetch.run import Download
from lawchatd.fetch.status import Phase, Snapshot, Status

__all__ = [
    "Download", "DownloadFailed", "Phase", "Snapshot", "Status", "describe", "final_path",
    "part_path",
]  # fmt: skip
