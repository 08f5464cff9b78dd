"""train.py's output folder: one run at a time, and no run silently replacing another's results."""
import os

from src.context import UserError
from src.files import FolderLock, check_folder, remove_scratch

# What train.py writes into output_dir.
RUN_FILES = ("config.yaml", "log.csv", "last.ckpt", "best.ckpt")
# The run_distribute_train_*.sh launchers let msrun put its worker logs here by default,
# before train.py starts: not an earlier run.
MSRUN_LOG_FOLDER = "msrun_log"


def check_output_dir(folder, resume, overwrite):
    """The checks that need no lock, made before anything is written."""
    check_folder(folder, label=f"--output_dir {folder}")
    if resume and overwrite:
        raise UserError("--overwrite starts a new run and --resume continues one: give only one of them")


def claim_output_dir(folder, resume, overwrite):
    """Lock folder for this run (released when the process ends) and make sure it holds no other
    run's results: a folder with anything in it needs --resume (continue that run) or --overwrite
    (replace its results). Returns the lock."""
    lock = FolderLock(folder, "train.py")
    remove_scratch(folder, RUN_FILES)  # left by a killed run; nobody else writes them while we hold the lock
    earlier = sorted(name for name in os.listdir(folder) if name not in (FolderLock.LOCK_NAME, MSRUN_LOG_FOLDER))
    if earlier and not (resume or overwrite):
        lock.release()
        shown = ", ".join(earlier[:4]) + (", ..." if len(earlier) > 4 else "")
        raise UserError(f"--output_dir {folder} is not empty ({shown}): continue that run with --resume last, "
                        f"replace its results with --overwrite, or choose another --output_dir")
    if overwrite:
        for name in RUN_FILES:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                os.remove(path)
    return lock
