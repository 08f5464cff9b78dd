"""Writing files: every file the package writes goes through atomic_write, so a crash, a full disk
or Ctrl-C leaves either the old file or the complete new one, never a torn file or a stray temporary."""
import errno
import fcntl
import functools
import os
import shutil
import socket
import tempfile

from src.context import UserError, scratch_folder, uninterrupted

# Scratch folders of atomic_write: ".<target name>.<random>.tmp" beside the target.
SCRATCH_SUFFIX = ".tmp"


def atomic_write(path, write, suffix=""):
    """Create path all at once: write(tmp) writes the content to tmp, which is then made durable
    (fsync) and renamed to path.

    tmp (ending in suffix) lies in a fresh scratch folder beside path: the same file system, so the
    rename is atomic, and a place for any helper files the writer makes (MindSpore's save_checkpoint
    writes its own temporary first). The scratch folder is removed whatever happens: an exception,
    KeyboardInterrupt, or Ctrl-C stopping a command (src/context.py; it lets a rename finish).
    A failing write (disk full, read-only folder) is a UserError and leaves path as it was.
    """
    folder = os.path.dirname(os.path.abspath(path))
    make_folder(folder, label=f"cannot write {path}")
    create = functools.partial(_call, path, tempfile.mkdtemp, prefix=f".{os.path.basename(path)}.",
                               suffix=SCRATCH_SUFFIX, dir=folder)
    with scratch_folder(create) as scratch:
        tmp = os.path.join(scratch, "content" + suffix)
        _call(path, write, tmp)
        _call(path, _fsync, tmp)
        with uninterrupted():
            _call(path, os.replace, tmp, path)
        _call(path, _fsync, folder)
    return path


def write_text(path, text):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    return atomic_write(path, write)


def write_bytes(path, data):
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, write)


def save_figure(fig, path, **options):
    """A matplotlib figure, its format from path's extension."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, **options), suffix=os.path.splitext(path)[1])


def _call(path, function, *args, **kwargs):
    try:
        return function(*args, **kwargs)
    except OSError as err:
        raise UserError(f"cannot write {path}: {_reason(err)}") from None


def _reason(err):
    if err.errno == errno.ENOSPC:
        return "no space left on the device (the previous file, if any, is unchanged)"
    return err.strerror or str(err)


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_folder(folder, label=None):
    """Create folder (and its parents) or raise a UserError saying why it cannot be."""
    check_folder(folder, label)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise UserError(f"{label or folder}: cannot create the folder: {_reason(err)}") from None


def check_folder(folder, label=None):
    """UserError unless folder is a writable folder or can be created; nothing is written.

    label names the setting in the message (e.g. "--output_dir out").
    """
    label = label or folder
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"{label}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{label}: the folder {existing} is not writable")


def check_output_file(path, flag):
    """UserError unless path can be written as a file, checked before any work is done."""
    if os.path.isdir(path):
        raise UserError(f"{flag} {path} is a folder; give a file name")
    check_folder(os.path.dirname(os.path.abspath(path)), label=f"{flag} {path}")


def remove_scratch(folder, names):
    """Remove the scratch folders that a killed writer of the files `names` left in folder (only
    call this while no other process may be writing them)."""
    for entry in os.scandir(folder):
        if (entry.is_dir() and entry.name.endswith(SCRATCH_SUFFIX)
                and any(entry.name.startswith(f".{name}.") for name in names)):
            shutil.rmtree(entry.path, ignore_errors=True)


class FolderLock:
    """An exclusive lock on a folder for as long as this process holds it (fcntl.flock on LOCK_NAME).

    The kernel releases it when the process ends, however it ends. The lock file records the
    holder (pid and host) for the error message of a second process.
    """

    LOCK_NAME = ".lock"

    def __init__(self, folder, purpose):
        make_folder(folder)
        self.path = os.path.join(folder, self.LOCK_NAME)
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise UserError(f"cannot create {self.path}: {_reason(err)}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            raise UserError(f"{folder} is in use by {holder}: wait for it to finish, "
                            f"or choose another folder") from None
        # The holder's name is written in place, not by atomic_write: the lock belongs to this inode.
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{purpose} (pid {os.getpid()} on host {socket.gethostname()})\n".encode(), 0)

    def release(self):
        os.close(self.fd)
