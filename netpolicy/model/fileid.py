"""What tells whether a file changed without reading it: the policy's list and database caches
and serve's file watcher all ask the same question.

A write in place changes the size or the modification time (nanoseconds: two writes within a
second differ), a file renamed over the old one has a new inode; the device keeps two files
with the same inode number on different file systems apart.
"""

from __future__ import annotations

import os

FileId = tuple[int, int, int, int]


def file_id(st: os.stat_result) -> FileId:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns
