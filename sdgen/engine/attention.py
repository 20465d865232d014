"""keras-cv's UNet attention through one fused op instead of an explicit score matrix.

keras-cv's CrossAttention builds the full (time x time) score matrix: 4096 x 4096 per head
at 64x64 latents. `keras.ops.dot_product_attention` maps to each backend's fused kernel
(cuDNN flash attention on JAX/GPU where it applies), with the same arithmetic: the
weights, projections and outputs are keras-cv's own (tests/engine/test_kerascv.py checks
the outputs against the original within float tolerance).
"""

from __future__ import annotations

import types

import keras
from keras import ops
from keras_cv.src.models.stable_diffusion.diffusion_model import CrossAttention


def _fused_call(self, inputs, context=None):
    if context is None:
        context = inputs
    q, k, v = self.to_q(inputs), self.to_k(context), self.to_v(context)
    shape_q = (-1, inputs.shape[1], self.num_heads, self.head_size)
    shape_kv = (-1, context.shape[1], self.num_heads, self.head_size)
    # (batch, time, heads, head_size): the layout dot_product_attention takes
    attn = ops.dot_product_attention(
        ops.reshape(q, shape_q), ops.reshape(k, shape_kv), ops.reshape(v, shape_kv), scale=self.scale
    )
    return self.out_proj(ops.reshape(attn, (-1, inputs.shape[1], self.num_heads * self.head_size)))


def attention_layers(model: keras.Model) -> list[CrossAttention]:
    return [layer for layer in model._flatten_layers(include_self=False) if isinstance(layer, CrossAttention)]


def use_fused_attention(model: keras.Model, fused: bool = True) -> int:
    """Switch every CrossAttention of `model` to the fused op (or back); returns how many."""
    layers = attention_layers(model)
    for layer in layers:
        if fused:
            layer.call = types.MethodType(_fused_call, layer)
        elif "call" in layer.__dict__:
            del layer.call
    return len(layers)
