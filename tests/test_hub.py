"""mindspore_hub_conf.create_network builds the registered variants under any letter case."""
import pytest

from mindspore_hub_conf import create_network


@pytest.mark.parametrize("name,expected", [("BiMLP_T", "BiMLP_T"), ("bimlp_t", "BiMLP_T"), ("bimlp_t14", "BiMLP_T14"),
                                           ("BIMLP_S", "BiMLP_S")])
def test_names_in_any_case(name, expected):
    net = create_network(name, num_classes=7)
    assert net.num_classes == 7
    if expected.startswith("BiMLP_T"):
        assert net.patch_embed.proj.in_channels == 1
        assert net.patch_embed.proj.kernel_size == ((3, 3) if expected == "BiMLP_T14" else (4, 4))
    else:
        assert [len(stage) for stage in net.network[::2]] == [2, 2, 4, 2]


def test_kwargs_reach_the_model():
    assert create_network("bimlp_t", binary=False).binary is False


def test_unknown_name():
    with pytest.raises(ValueError, match="available: BiMLP_M, BiMLP_S, BiMLP_T"):
        create_network("bimlp_xl")
