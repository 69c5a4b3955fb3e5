"""Wide Residual Networks (Zagoruyko & Komodakis 2016): pre-activation ResNets of widths 16k/32k/64k."""

import keras

from models.layers import bn_relu, check_common, classifier, conv, preact_basic_block
from models.registry import register


def wrn(depth, width, *, dropout=0.0, num_classes=10, input_shape=(32, 32, 3), weight_decay=0.0,
        name="wrn"):
    """WRN-`depth`-`width` (Zagoruyko & Komodakis 2016): wrn_28_10 has 36.5M parameters.

    A 3x3 stem of 16 channels, three stages of (depth - 4) / 6 pre-activation basic blocks of
    widths 16k, 32k, 64k, then BN-ReLU, average pooling and a dense layer. `dropout` is applied
    between the two convolutions of each block (the paper's 0.3 where it uses it).
    """
    check_common(num_classes, input_shape)
    if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ValueError(f"depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40); got {depth!r}")
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive integer (1, 2, 4, 8, 10, 12); got {width!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1); got {dropout!r}")
    blocks = (depth - 4) // 6
    inputs = keras.Input(input_shape, name="image")
    x = conv(inputs, 16, 3, weight_decay=weight_decay, name="stem_conv")
    for stage, filters in enumerate((16 * width, 32 * width, 64 * width), start=1):
        for b in range(1, blocks + 1):
            # The paper's shortcut: identity, or a 1x1 projection only where the shape changes,
            # i.e. in the first block of each stage. (A projection in every block is the bug
            # behind the 11.3M that an older Keras port prints for WRN-16-8.)
            strides = 2 if stage > 1 and b == 1 else 1
            x = preact_basic_block(x, filters, strides, dropout=dropout, weight_decay=weight_decay,
                                   name=f"stage{stage}_block{b}")
    x = bn_relu(x, name="final")
    outputs = classifier(x, num_classes, weight_decay=weight_decay)
    return keras.Model(inputs, outputs, name=name)


# Zagoruyko & Komodakis 2016, Sec. 3: SGD with Nesterov momentum 0.9 (dampening 0), batch 128,
# lr 0.1 multiplied by 0.2 at epochs 60, 120 and 160, 200 epochs, weight decay 5e-4.
WRN_RECIPE = dict(
    epochs=200, batch_size=128, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
    schedule="step", lr_milestones=[60, 120, 160], lr_factor=[0.2],
    preprocess="standardize", augment="standard",
    source="Zagoruyko & Komodakis 2016 (arXiv:1605.07146), Sec. 3")
_PAPER = "Zagoruyko & Komodakis 2016, Wide Residual Networks"

register("wrn_16_8", wrn, depth=16, width=8, paper=_PAPER, paper_params="11.0M", recipe=WRN_RECIPE)
register("wrn_28_10", wrn, depth=28, width=10, paper=_PAPER, paper_params="36.5M", recipe=WRN_RECIPE)
register("wrn_40_4", wrn, depth=40, width=4, paper=_PAPER, paper_params="8.9M", recipe=WRN_RECIPE)
