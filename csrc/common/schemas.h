// schemas.h: the op schemas, as strings, so that csrc/registration.cpp (namespace minilvlm)
// and the emulator module (namespace minilvlm_emu, the CUDA kernels run on the CPU) declare
// exactly the same signatures.
#pragma once

// One AdamW step over flat buffers. Segment i is [seg_bounds[2i], seg_bounds[2i+1]) with its
// own lr, weight decay and step; grad_scale (1-element float32) multiplies every grad, for
// unscaling and clipping. found_inf (1-element float32 on param's device): when non-zero the
// step is skipped and every buffer is left as it was (the kernels read it on the device, so the
// caller needs no host sync to decide).
#define MINILVLM_SCHEMA_FUSED_ADAMW                                                              \
  "fused_adamw_(Tensor(a!) param, Tensor grad, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, "      \
  "Tensor(d!)? master, int[] seg_bounds, float[] seg_lr, float[] seg_wd, int[] seg_step, "       \
  "float beta1, float beta2, float eps, Tensor? grad_scale, Tensor? found_inf=None) -> ()"

// The same step over lists of tensors (one segment per tensor, any count and sizes; FSDP2's local
// shards): params[i], grads[i], exp_avgs[i], exp_avg_sqs[i] and masters[i] (masters: empty, or one
// float32 master per bf16/fp16 param) hold the same number of elements, contiguous, with
// lrs[i], weight_decays[i] and steps[i]. grad_scale and found_inf as above.
#define MINILVLM_SCHEMA_FUSED_ADAMW_MULTI                                                             \
  "fused_adamw_multi_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "                 \
  "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] masters, float[] lrs, float[] weight_decays, int[] steps, " \
  "float beta1, float beta2, float eps, Tensor? grad_scale, Tensor? found_inf) -> ()"

// Patch embedding (ViT conv stem, EVE's embedder): pixels [B,C,H,W] (or [B,H,W,C] when
// channels_last), uint8 (scaled by 1/255) or float32 -> per-channel (x - mean) / std ->
// non-overlapping p x p patches -> patches @ weight^T + bias -> + pos_embed, with the class
// token (cls_token + pos_embed[0]) prepended when given. Output [B, T, D] in weight's dtype,
// T = N + (cls_token ? 1 : 0).
#define MINILVLM_SCHEMA_PATCH_EMBED                                                              \
  "patch_embed(Tensor pixels, Tensor weight, Tensor? bias, Tensor? pos_embed, Tensor? cls_token, " \
  "int patch_size, float[]? mean, float[]? std, bool channels_last) -> Tensor"

// Its backward. grad_out is [B, T, D]; the patches are recomputed from pixels. Returns
// (grad_weight [D,C,p,p], grad_bias [D], grad_tokens [T, D]): grad_tokens is grad_out summed
// over the batch, which is the gradient of pos_embed, and its row 0 is the gradient of
// cls_token when has_cls. Every output is computed; Python drops the ones without an input.
#define MINILVLM_SCHEMA_PATCH_EMBED_BACKWARD                                                      \
  "patch_embed_backward(Tensor grad_out, Tensor pixels, Tensor weight, int patch_size, "          \
  "float[]? mean, float[]? std, bool channels_last, bool has_cls) -> (Tensor, Tensor, Tensor)"

// LaVIN's MM-Adapter (common/mm_adapter_host.h): out = x + scale * sum_i w_i (U_i h + c_i) with
// h = down_w x + down_b and w = softmax((router_w t + router_b) / temperature). t may be [B, 0]
// (no router; then up_w has one path and w = 1). The backward returns the gradients of
// (x, t, router_w, router_b, down_w, down_b, up_w, up_b). dropout > 0 drops elements of h with
// probability `dropout` (and scales the kept ones by 1 / (1 - dropout)); the mask is a pure function
// of (seed, offset, element index of h as [B,T,r]) (common/philox.h), so the backward, given the
// same three, regenerates it.
#define MINILVLM_SCHEMA_MM_ADAPTER                                                                   \
  "mm_adapter(Tensor x, Tensor t, Tensor router_w, Tensor router_b, Tensor down_w, Tensor down_b, "   \
  "Tensor up_w, Tensor up_b, float temperature, float scale, int groups, float dropout=0., int seed=0, "  \
  "int offset=0) -> Tensor"
#define MINILVLM_SCHEMA_MM_ADAPTER_BACKWARD                                                          \
  "mm_adapter_backward(Tensor grad_out, Tensor x, Tensor t, Tensor router_w, Tensor router_b, "       \
  "Tensor down_w, Tensor down_b, Tensor up_w, Tensor up_b, float temperature, float scale, "          \
  "int groups, float dropout=0., int seed=0, int offset=0) "                                          \
  "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"

// RMSNorm with the residual add of LLaMA/Qwen2 blocks (common/rms_norm_host.h): s = x + residual
// (the next residual stream), y = weight * to_dtype(s * rsqrt(mean(s^2) + eps)), statistics in
// float32. Returns (y, s); without a residual s is an empty [0] tensor (s is x). The backward takes
// the gradients of y and of s (None when s is not used later), s (x without a residual) and returns
// (the gradient of s, which is that of x and of residual; grad_weight, [0] unless weight_grad).
#define MINILVLM_SCHEMA_RMS_NORM \
  "rms_norm(Tensor x, Tensor? residual, Tensor weight, float eps) -> (Tensor, Tensor)"
#define MINILVLM_SCHEMA_RMS_NORM_BACKWARD                                                          \
  "rms_norm_backward(Tensor grad_y, Tensor? grad_s, Tensor s, Tensor weight, float eps, "          \
  "bool weight_grad) -> (Tensor, Tensor)"

// LayerNorm over the last dimension (common/layer_norm_host.h), statistics in float32. The backward
// recomputes them from x and returns (grad_x, grad_weight, grad_bias); a gradient not asked for
// (weight_grad, bias_grad false) is an empty [0] tensor.
#define MINILVLM_SCHEMA_LAYER_NORM "layer_norm(Tensor x, Tensor weight, Tensor? bias, float eps) -> Tensor"
#define MINILVLM_SCHEMA_LAYER_NORM_BACKWARD                                                        \
  "layer_norm_backward(Tensor grad_y, Tensor x, Tensor weight, float eps, bool weight_grad, "      \
  "bool bias_grad) -> (Tensor, Tensor, Tensor)"

// SwiGLU silu(gate) * up (common/activation_math.h); the backward recomputes sigmoid(gate) and
// returns (grad_gate, grad_up).
#define MINILVLM_SCHEMA_SWIGLU "swiglu(Tensor gate, Tensor up) -> Tensor"
#define MINILVLM_SCHEMA_SWIGLU_BACKWARD "swiglu_backward(Tensor grad, Tensor gate, Tensor up) -> (Tensor, Tensor)"

// GELU (common/activation_math.h): approximate is "none" (erf), "tanh" or "quick" (x sigmoid(1.702 x)).
#define MINILVLM_SCHEMA_GELU "gelu(Tensor x, str approximate) -> Tensor"
#define MINILVLM_SCHEMA_GELU_BACKWARD "gelu_backward(Tensor grad, Tensor x, str approximate) -> Tensor"
// Rotary position embeddings (common/rope_host.h), in place on q [B, H, T, hd] and optionally k
// [B, H_kv, T, hd] (float32, bfloat16, float16): channel pairs (i, i + half), i < half, rotated by
// the angle whose cosine and sine are cos, sin [B or 1, T, half] (float32); channels from 2*half
// on pass through. The backward is the rotation of grad by -angle, into a new tensor.
#define MINILVLM_SCHEMA_ROPE "rope_(Tensor(a!) q, Tensor(b!)? k, Tensor cos, Tensor sin) -> ()"
#define MINILVLM_SCHEMA_ROPE_BACKWARD "rope_backward(Tensor grad, Tensor cos, Tensor sin) -> Tensor"
// Summed cross-entropy of the LM head (common/linear_cross_entropy_host.h): hidden [N, D] @
// weight[V, D]^T (+ bias [V]) against targets [N] (int64 in [0, V)), computed in compute_dtype
// chunk_rows rows at a time. Returns (loss: float32 scalar, grad_hidden [N, D] in compute_dtype,
// grad_weight [V, D] in weight's dtype, grad_bias [V] float32): the gradients of the summed loss, computed
// in the same pass, those not asked for by output_mask (hidden, weight, bias) as empty tensors.
#define MINILVLM_SCHEMA_LINEAR_CROSS_ENTROPY                                                          \
  "linear_cross_entropy(Tensor hidden, Tensor weight, Tensor? bias, Tensor targets, "                 \
  "ScalarType compute_dtype, int chunk_rows, bool[3] output_mask) -> (Tensor, Tensor, Tensor, Tensor)"
