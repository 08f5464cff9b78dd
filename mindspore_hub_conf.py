"""MindSpore Hub entry: build a BiMLP variant by name.

    from mindspore_hub_conf import create_network
    net = create_network("bimlp_s", num_classes=1000)
"""
from src.wavemlp_20_3 import MODELS, create_model

_CANONICAL = {name.lower(): name for name in MODELS}


def create_network(name, **kwargs):
    """A name of src.wavemlp_20_3.MODELS (any letter case); kwargs go to the model (num_classes, binary, ...)."""
    canonical = _CANONICAL.get(str(name).lower())
    if canonical is None:
        raise ValueError(f"unsupported network {name!r}; available: {', '.join(sorted(MODELS))}")
    return create_model(canonical, **kwargs)
