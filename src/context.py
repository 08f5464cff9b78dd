"""Device set-up shared by every entry point, with clear errors instead of deep tracebacks."""
import os
import sys

PLATFORMS = ("Ascend", "GPU", "CPU")


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


def run_cli(main):
    """Run main(); a UserError becomes one message on stderr and a non-zero exit."""
    try:
        return main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def setup_device(platform, device_id=0, mode="graph"):
    """Select the backend; on CPU pin oneDNN to AVX2 kernels unless the user chose.

    On AVX-512 CPUs MindSpore 2.10's bundled oneDNN runs convolutions larger than
    1x1 through a slow reference kernel; ONEDNN_MAX_CPU_ISA=AVX2 selects jit
    kernels 20-100x faster. It must be set before the first convolution runs.
    """
    if platform not in PLATFORMS:
        raise UserError(f"unsupported platform {platform!r}; choose one of {', '.join(PLATFORMS)}")
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


def cache_dir():
    """Where the package keeps derived files (decompressed data, compiled kernels)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bimlp")


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
