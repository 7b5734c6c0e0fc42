"""The download engine in small parts; README "Layout" says which module owns what."""

from lawchatd.download.errors import DownloadFailed, describe
from lawchatd.download.partial import final_path, part_path
from lawchatd.download.run import Download
from lawchatd.download.status import Phase, Snapshot, Status

__all__ = [
    "Download", "DownloadFailed", "Phase", "Snapshot", "Status", "describe", "final_path",
    "part_path",
]  # fmt: skip
