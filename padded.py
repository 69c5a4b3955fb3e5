"""Layers with a channel count the CPU's vectors do not divide, computed with zero channels added.

oneDNN's convolution, pooling and batch-norm kernels work on 8 float32 channels at a time on an
AVX2 CPU. LeNet's first convolution has 6 filters, so its output, the pooling after it and the
next convolution's input (and that convolution's input gradient, its slowest kernel) are 6-channel
tensors the kernels handle as partly empty vectors. Computed with 2 zero filters more, those
tensors have 8 channels, and LeNet's training step and epoch are faster on CPUs (BENCHMARKS.md,
"Padded channels").
DenseNet-BC-100-12's concatenations grow by 12 channels, so half of its batch norms (36, 60, ...,
204; 150, 162, ... channels) run on oneDNN's generic batch-norm kernel, about half as fast as its
AVX2 one; computed over 2-6 zero channels more, they run on the AVX2 one (BENCHMARKS.md, "Padded
batch norms"). oneDNN's bfloat16 kernels (--mixed-precision on AVX512-BF16 and AMX CPUs) work on
blocks of 16 channels, and its bfloat16 batch norm runs about 4.5 times slower over a channel count
not a multiple of 16 (bench/batch_norm_speed.py): under bfloat16 the multiple is 16, LeNet's 6
channels included (BENCHMARKS.md, "bfloat16 on AVX512-BF16").

`pad_channels(model)` does this in place, for each chain it can prove exact. A chain starts at
- a stock `Conv2D` whose filters are not a multiple of 8 and whose activation acts on each value
  alone (not softmax, which would count the extra channels in), computed with zero filters (zero
  kernel, zero bias) added, so each extra channel holds its activation of 0 (0 for ReLU); or
- a stock `BatchNormalization` that fused.py computes (over the last axis of a 4-D tensor) over a
  channel count not a multiple of 8, computed over zero channels appended to its input, with zero
  scale and offset there, so each extra channel is 0 in training and in inference alike; its
  statistics (and so its moving statistics) are the real channels', computed as before;
and goes on only through pooling layers and element-wise activation layers to stock `Conv2D`
layers, never to a model output, Flatten, Dense, Add, Concatenate, a batch norm, a channel-mixing
activation, ... Pooling keeps the extra channels' value and activation layers map it, and it
must stay finite; the convolutions at the end are computed with zero input channels added to their
kernels, so the extra channels add exactly 0 to every output, and their gradients get exactly 0
from them. The real channels are computed as before. The variables, their gradients and the saved
file are unchanged: the padding is made from the variables inside each step (`concatenate` with
zeros, whose gradient is a slice) and the layers stay stock Keras layers (`keras.saving.load_model`
needs nothing, and runs them unpadded; patches.route_call reroutes their calls, and checks that
Keras' Conv2D is still the code `_padded_call` reproduces). LeNet's forward outputs and kernel
gradients come out bit for bit as without padding; the biases' gradients, sums over 8 channels'
worth of tensor instead of 6, can differ in the last bit; a padded batch norm runs another oneDNN
kernel, which rounds differently (tests/test_padded.py compares within float32 rounding).

On other backends, and for layers it cannot prove exact (grouped or channels-first
convolutions, shared layers, LoRA or quantized layers, batch norms Keras computes), the model
runs as before.
"""

import math

import tfenv  # noqa: F401  (before keras: TensorFlow reads its settings when it loads)
import keras
from keras import ops

import fused
import patches

# Layers that pool each channel on its own, passing extra channels through as finite values.
POOLING = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
# Activation layers, passed through where their activation is element-wise (`_elementwise`).
ACTIVATION_LAYERS = (keras.layers.ReLU, keras.layers.Activation, keras.layers.LeakyReLU, keras.layers.ELU)
# Keras' activations that act on each value alone.
ELEMENTWISE = ("celu", "elu", "exponential", "gelu", "hard_shrink", "hard_sigmoid", "hard_silu", "hard_swish",
               "hard_tanh", "leaky_relu", "linear", "log_sigmoid", "mish", "relu", "relu6", "selu", "sigmoid",
               "silu", "soft_shrink", "softplus", "softsign", "sparse_plus", "sparse_sigmoid", "squareplus",
               "swish", "tanh", "tanh_shrink", "threshold")
MULTIPLE = 8  # float32 lanes of an AVX2 register
BFLOAT16_MULTIPLE = 16  # the channel block of oneDNN's bfloat16 kernels on AVX512-BF16 and AMX CPUs


def kernel_multiple(policy):
    """The channel multiple to pad to under the precision `policy`: 16 for bfloat16, whose oneDNN
    batch norm runs about 4.5 times slower over channels not a multiple of 16 (BENCHMARKS.md), 8 otherwise."""
    return BFLOAT16_MULTIPLE if "bfloat16" in policy else MULTIPLE


def pad_channels(model, multiple=MULTIPLE):
    """Pads the channels from the convolutions and fused batch norms of `model` to the convolutions
    after them, where that is provably exact (see the module's docstring), in place; returns how
    many layers (convolutions and batch norms) now compute padded outputs."""
    if keras.backend.backend() != "tensorflow":
        return 0
    candidates = [(layer, -layer.filters % multiple, _value(layer.activation, 0.0)) for layer in model.layers
                  if _plain_conv(layer) and layer.filters % multiple and _elementwise(layer.activation)]
    candidates += [(layer, -channels % multiple, 0.0) for layer, channels in _fused_batch_norms(model)
                   if channels % multiple]
    candidates = [(layer, extra, value) for layer, extra, value in candidates if value is not None]
    if not candidates:
        return 0
    graph = _Graph(model)
    pad_out, pad_in = {}, {}
    for layer, extra, value in candidates:
        ends = graph.convolutions_after(layer, value)
        if ends is None:
            continue
        pad_out[id(layer)] = extra
        for end in ends:
            pad_in[id(end)] = extra
    for layer in graph.layers:
        extra_out, extra_in = pad_out.get(id(layer), 0), pad_in.get(id(layer), 0)
        if not (extra_out or extra_in):
            continue
        if _plain_conv(layer):
            patches.route_call(layer, _padded_call, extra_in=extra_in, extra_out=extra_out)
        else:  # a fused batch norm, which is only ever a chain's start
            fused.fuse_layer(layer, extra_channels=extra_out)
        if extra_in:
            layer.input_spec = keras.InputSpec(min_ndim=4, axes={-1: layer.kernel.shape[2] + extra_in})
    return len(pad_out)


def padded_channels(layer):
    """(zero input channels, zero output channels) `layer` is computed with; (0, 0) where it is not padded."""
    route = patches.routed_call(layer)
    if route is not None and route.function is _padded_call:
        return route.options["extra_in"], route.options["extra_out"]
    return 0, fused.appended_channels(layer)


class _Graph:
    """Who consumes each layer's output in a functional model, from Keras' public API: the model's
    config (how many times each layer is called in it) and each layer's `input` and `output`."""

    def __init__(self, model):
        self.layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
        self.consumers, self.single = {}, set()
        self.outputs = {id(t) for t in model.outputs}
        calls = {c.get("name", c.get("config", {}).get("name")): len(c.get("inbound_nodes", [None]))
                 for c in model.get_config().get("layers", [])}
        for layer in self.layers:
            if calls.get(layer.name) != 1:  # shared: `input` and `output` tell its first call only
                continue
            try:
                inputs = layer.input
                layer.output
            except (AttributeError, ValueError):
                continue
            self.single.add(id(layer))
            for t in keras.tree.flatten(inputs):
                self.consumers.setdefault(id(t), []).append((layer, t is inputs))

    def convolutions_after(self, layer, value):
        """The convolutions every path from `layer`'s output reaches through pooling and
        element-wise activation layers alone, where the extra channels, holding `value` as they
        leave `layer`, stay finite; None where a path meets anything else (or the model's
        output, or a shared layer)."""
        if id(layer) not in self.single:
            return None
        ends, frontier = [], [(layer.output, value)]
        while frontier:
            t, value = frontier.pop()
            if id(t) in self.outputs or id(t) not in self.consumers:
                return None
            for consumer, sole_input in self.consumers[id(t)]:
                if not sole_input or id(consumer) not in self.single:
                    return None
                if type(consumer) in POOLING and consumer.data_format == "channels_last":
                    frontier.append((consumer.output, value))  # pools of a constant channel: the constant
                elif type(consumer) in ACTIVATION_LAYERS and _elementwise(getattr(consumer, "activation", None)):
                    after = _value(consumer.call, value)
                    if after is None:
                        return None
                    frontier.append((consumer.output, after))
                elif _plain_conv(consumer):
                    ends.append(consumer)
                else:
                    return None
        return ends


def _fused_batch_norms(model):
    """(layer, channels) for each batch norm of `model` computed by fused.py's kernel call, over
    the last axis of a 4-D input."""
    for layer in model.layers:
        if type(layer) is keras.layers.BatchNormalization and fused.is_fused(layer):
            try:
                rank = len(layer.input.shape)
            except (AttributeError, ValueError):  # shared: not padded anyway
                continue
            if rank == 4 and layer.axis in (-1, 3):
                yield layer, layer.moving_mean.shape[0]


def _plain_conv(layer):
    return (type(layer) is keras.layers.Conv2D and layer.data_format == "channels_last" and layer.groups == 1
            and not getattr(layer, "lora_enabled", False) and getattr(layer, "quantization_mode", None) is None)


def _elementwise(activation):
    """Whether `activation` (a function of Keras' activations, or None) acts on each value alone:
    softmax, log_softmax, sparsemax and glu mix the channels; functions Keras does not name are
    not known."""
    return activation is None or any(activation is getattr(keras.activations, name, None) for name in ELEMENTWISE)


def _value(function, value):
    """function(value) for one float32 value; None where it is not finite (0 * inf would not be 0)
    or the function cannot run on its own."""
    if function is None:
        return value
    try:
        out = float(ops.convert_to_numpy(function(ops.full((1, 1, 1, 1), value, dtype="float32"))).ravel()[0])
    except Exception:
        return None
    return out if math.isfinite(out) else None


def _padded_call(self, inputs, *, extra_in=0, extra_out=0):
    """Conv2D.call with `extra_in` zero input channels and `extra_out` zero filters added."""
    kernel = ops.convert_to_tensor(self.kernel)  # read as the layer computes (cast under mixed precision)
    kh, kw, cin, cout = kernel.shape
    if extra_in:
        kernel = ops.concatenate([kernel, ops.zeros((kh, kw, extra_in, cout), kernel.dtype)], axis=2)
    if extra_out:
        # Not ops.pad: TensorFlow's oneDNN graph pass aborts the process on a Pad feeding a
        # fused convolution's filter (it takes it for a padded input).
        kernel = ops.concatenate([kernel, ops.zeros((kh, kw, cin + extra_in, extra_out), kernel.dtype)], axis=3)
    outputs = self.convolution_op(inputs, kernel)
    if self.use_bias:
        bias = ops.convert_to_tensor(self.bias)
        if extra_out:
            bias = ops.concatenate([bias, ops.zeros((extra_out,), bias.dtype)], axis=0)
        outputs = ops.add(outputs, ops.reshape(bias, (1, 1, 1, -1)))
    return self.activation(outputs) if self.activation is not None else outputs
