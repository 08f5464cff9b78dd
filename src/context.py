"""Device set-up and the command-line frame shared by every entry point: clear errors instead of
deep tracebacks, and Ctrl-C that stops within seconds."""
import contextlib
import os
import shutil
import signal
import sys
import threading

PLATFORMS = ("Ascend", "GPU", "CPU")
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a Ctrl-C'd command


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


def run_cli(main):
    """Run main(); a UserError becomes one message on stderr and exit status 2, Ctrl-C exit status 130."""
    previous = _stop_on_interrupt()
    try:
        return main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    finally:
        _restore_handlers(previous)


_interrupt = {"note": "", "watcher": None, "pipe": None}
# Held while a file is renamed into place or a scratch folder is created or removed: Ctrl-C waits for it.
_renaming = threading.RLock()
_scratch_folders = set()


@contextlib.contextmanager
def uninterrupted():
    """A short block (a rename) that Ctrl-C lets finish before the process stops."""
    with _renaming:
        yield


@contextlib.contextmanager
def scratch_folder(create):
    """The folder create() makes, removed when the block ends, or by Ctrl-C stopping the process."""
    with _renaming:
        folder = create()
        _scratch_folders.add(folder)
    try:
        yield folder
    finally:
        with _renaming:
            shutil.rmtree(folder, ignore_errors=True)
            _scratch_folders.discard(folder)


def set_interrupt_note(note):
    """Text added to the message printed when Ctrl-C stops the command (e.g. how to resume)."""
    _interrupt["note"] = note


def _exit_interrupted():
    note = f"; {_interrupt['note']}" if _interrupt["note"] else ""
    print(f"interrupted{note}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(EXIT_INTERRUPTED)


def _stop_on_interrupt():
    """Make SIGINT (Ctrl-C) and SIGTERM stop the command promptly; returns the handlers to restore.

    MindSpore compiles graphs in C++ and, once its runtime has started, replaces the SIGINT
    handler by one that sends the process SIGTERM; a KeyboardInterrupt raised inside its
    compiler is sometimes swallowed. So the signals are not turned into exceptions: Python's
    handlers only wake a watcher thread (through the wakeup fd, which works while the main
    thread is inside C++). The watcher waits for a rename in progress (uninterrupted), removes
    the scratch folders of unfinished writes, and ends the process.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    if _interrupt["watcher"] is None:
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        _interrupt["pipe"] = write_end
        _interrupt["watcher"] = threading.Thread(target=_watch, args=(read_end,), name="interrupt-watcher",
                                                 daemon=True)
        _interrupt["watcher"].start()
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous["wakeup_fd"] = signal.set_wakeup_fd(_interrupt["pipe"], warn_on_full_buffer=False)
    return previous


def _ignore(signum, frame):
    """The watcher thread acts on the signal; the main thread carries on until then."""


def _watch(read_end):
    while True:
        received = os.read(read_end, 1)
        if received and received[0] in (signal.SIGINT, signal.SIGTERM):
            _renaming.acquire()
            for folder in _scratch_folders:
                shutil.rmtree(folder, ignore_errors=True)
            _exit_interrupted()


def _restore_handlers(previous):
    if previous is None:
        return
    signal.set_wakeup_fd(previous.pop("wakeup_fd"))
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def setup_device(platform, device_id=0, mode="graph"):
    """Select the backend; on CPU pin oneDNN to AVX2 kernels unless the user chose.

    On AVX-512 CPUs MindSpore 2.10's bundled oneDNN runs convolutions larger than
    1x1 through a slow reference kernel; ONEDNN_MAX_CPU_ISA=AVX2 selects jit
    kernels 20-100x faster. It must be set before the first convolution runs.
    """
    if platform not in PLATFORMS:
        raise UserError(f"unsupported platform {platform!r}; choose one of {', '.join(PLATFORMS)}")
    check_device_id(device_id, "--device_id")
    if platform == "CPU":
        os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
    import mindspore as ms
    from mindspore import device_context

    available = getattr(device_context, platform.lower()).is_available()
    if not available:
        raise UserError(f"platform {platform} is not available in this MindSpore build "
                        f"(mindspore {ms.__version__}); install the {platform} package of MindSpore "
                        f"or use --platform CPU")
    if mode not in ("graph", "pynative"):
        raise UserError(f"mode must be graph or pynative, got {mode!r}")
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    try:
        ms.set_device(platform, int(device_id))
    except RuntimeError as err:
        # The device is fixed once MindSpore's runtime has started in this process.
        if ms.get_context("device_target") != platform:
            raise UserError(f"cannot switch to {platform}: this process already runs on "
                            f"{ms.get_context('device_target')} ({err})") from None


def check_device_id(device_id, label="device_id"):
    if isinstance(device_id, bool) or not isinstance(device_id, int) or device_id < 0:
        raise UserError(f"{label} must be a device number (0, 1, ...), got {device_id!r}")


def cache_dir():
    """Where the package keeps derived files (decompressed data, compiled kernels)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bimlp")


def check_output_argument(parser, path, flag):
    """A usage error (exit 2) before any work unless path can be written as a file (files.check_output_file)."""
    from src.files import check_output_file

    try:
        check_output_file(path, flag)
    except UserError as err:
        parser.error(str(err))


def add_model_argument(parser, default):
    """--model names the network variant in every command; the commands that read a checkpoint also
    take it as --checkpoint_nm, the MindSpore model zoo's name for the same flag."""
    from src.wavemlp_20_3 import MODELS

    parser.add_argument("--model", "--checkpoint_nm", dest="model", default=default, choices=sorted(MODELS),
                        metavar="VARIANT", help=f"network variant: {', '.join(sorted(MODELS))} (default: {default})")


def default_device_id():
    value = os.environ.get("DEVICE_ID", "0")
    if not value.isdigit():
        raise UserError(f"DEVICE_ID must be a device number, got {value!r}")
    return int(value)
