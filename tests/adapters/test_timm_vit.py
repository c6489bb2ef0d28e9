"""Reading a timm ViT's shape accepts and refuses the same models as pruning it."""

import pytest
import timm

from vitprune.adapters import check_prunable, vit_shape
from vitprune.errors import ModelError


@pytest.mark.parametrize("name", ["vit_base_patch16_xp_224", "vit_small_patch16_18x2_224"])
def test_shape_reading_refuses_what_pruning_refuses(name):
    if not timm.is_model(name):
        pytest.skip(f"{name} is not in this timm")
    model = timm.create_model(name, pretrained=False, depth=1, embed_dim=32, num_heads=2,
                              img_size=32, patch_size=16)
    with pytest.raises(ModelError) as pruning:
        check_prunable(model)
    with pytest.raises(ModelError) as reading:
        vit_shape(model)
    assert str(reading.value) == str(pruning.value)
    assert "cannot prune" in str(reading.value)
