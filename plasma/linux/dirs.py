"""Directories the coordinator keeps files in (spill files, fallback segments): ours alone.

A directory another local user created, or may write, lets that user plant files the
coordinator would read back as objects, or symlinks it would follow as root. So the
directory is created 0700 when missing, opened with ``O_NOFOLLOW`` (it may not be a symlink)
and refused unless this process's user owns it and nobody else may write it; files in it are
then opened relative to that descriptor, with ``O_NOFOLLOW`` too.
"""

from __future__ import annotations

import os
import stat

from plasma.errors import BadRequest

__all__ = ["NOFOLLOW", "open_private_directory"]

NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC  # flags for every file opened in such a directory


def open_private_directory(path: str, what: str) -> int:
    """A descriptor of directory ``path`` (created 0700 if missing), checked as described
    above; BadRequest naming ``what`` (e.g. "--spill-dir") and the problem otherwise."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise BadRequest(f"{what} {path}: cannot create it: {exc.strerror}") from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW)
    except OSError as exc:
        if os.path.islink(path):
            raise BadRequest(
                f"{what} {path} is a symbolic link: name the directory itself"
            ) from None
        raise BadRequest(f"{what} {path}: cannot open it: {exc.strerror}") from None
    info = os.fstat(fd)
    problem = ""
    if info.st_uid != os.geteuid():
        problem = f"is owned by uid {info.st_uid}, not by this coordinator's uid {os.geteuid()}"
    elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problem = f"may be written by other users (mode {stat.S_IMODE(info.st_mode):04o})"
    if problem:
        os.close(fd)
        raise BadRequest(
            f"{what} {path} {problem}: another user could plant files in it; use a directory "
            "of your own that only you may write (chmod go-w)"
        )
    return fd
