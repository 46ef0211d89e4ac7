"""The real-model corpus: architectures written by others (torchvision, timm, Hugging Face
transformers), built from their own code with random weights and small inputs.

    import corpus
    model, inputs = corpus.make("tv_mobilenet_v3_small")
    corpus.NAMES, corpus.CI            # every model; the part CI runs (tests/test_corpus.py)
    corpus.ENTRIES[name].families      # what operator families the model exercises

`benchmarks/run_corpus.py` builds, checks and times them all. Nothing is downloaded: every model is
made from its config (pretrained=False). torchvision's wheel here is a CUDA build whose C++ ops
cannot load beside torch+cpu; `import torchvision` needs the schemas of its two custom ops first
(`_define_torchvision_ops`). Its models are pure Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Entry:
    source: str  # torchvision | timm | transformers
    families: str  # the operator families it exercises (for the table and docs)
    make: Callable[[], tuple[torch.nn.Module, tuple]]


class FirstOutput(torch.nn.Module):
    """Hugging Face and torchvision models return ModelOutput / dict objects: keep one tensor
    (what a deployment exports), calling the model as its users do."""

    def __init__(self, model: torch.nn.Module, key=0, **kwargs):
        super().__init__()
        self.model, self.key, self.kwargs = model, key, kwargs

    def forward(self, *args):
        return self.model(*args, **self.kwargs)[self.key]


def _define_torchvision_ops() -> None:
    if getattr(_define_torchvision_ops, "done", False):
        return
    try:
        torch.ops.torchvision.nms  # noqa: B018 - a working torchvision install defines it
    except (AttributeError, RuntimeError):
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _define_torchvision_ops.lib = lib  # keep the registration alive
    _define_torchvision_ops.done = True


def _image(size: int = 64, channels: int = 3, batch: int = 1) -> tuple:
    return (torch.randn(batch, channels, size, size),)


def _ids(vocab: int, seq: int = 16, mask: bool = False) -> tuple:
    ids = torch.randint(0, vocab, (1, seq))
    if not mask:
        return (ids,)
    attn = torch.ones(1, seq, dtype=torch.int64)
    attn[:, seq - 4:] = 0  # padding tokens at the end
    return ids, attn


def _tv(name: str, size: int = 64, **kwargs):
    def make():
        _define_torchvision_ops()
        import torchvision

        model = getattr(torchvision.models, name)(weights=None, **kwargs)
        return model, _image(size)
    return make


def _tv_seg(name: str, size: int = 64):
    def make():
        _define_torchvision_ops()
        import torchvision

        model = getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None, num_classes=4)
        return FirstOutput(model, "out"), _image(size)
    return make


def _tv_video():
    _define_torchvision_ops()
    import torchvision

    return torchvision.models.video.mc3_18(weights=None, num_classes=10), (torch.randn(1, 3, 4, 32, 32),)


def _tv_vit():
    _define_torchvision_ops()
    from torchvision.models.vision_transformer import VisionTransformer

    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128,
                              num_classes=10)
    return model, _image(32)


def _tv_swin():
    _define_torchvision_ops()
    from torchvision.models.swin_transformer import SwinTransformer

    model = SwinTransformer(patch_size=[4, 4], embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4],
                            num_classes=10)
    return model, _image(32)


def _timm(name: str, size: int = 64, **kwargs):
    def make():
        _define_torchvision_ops()  # timm imports torchvision
        import timm

        return timm.create_model(name, pretrained=False, num_classes=10, **kwargs), _image(size)
    return make


def _timm_class(path: str, size: int, **kwargs):
    """A timm architecture class with a small config (the registered variants are too big)."""
    def make():
        _define_torchvision_ops()
        import importlib

        module, cls = path.rsplit(".", 1)
        model = getattr(importlib.import_module(module), cls)(num_classes=10, **kwargs)
        return model, _image(size)
    return make


def _hf(config_cls: str, model_cls: str, inputs: Callable[[object], tuple], key=0, call_kwargs=None, **config):
    def make():
        _define_torchvision_ops()  # transformers may import torchvision
        import transformers

        cfg = getattr(transformers, config_cls)(**config)
        if "." in model_cls:  # a part of a model (e.g. an encoder) from its modeling module
            import importlib

            module, cls = model_cls.rsplit(".", 1)
            model = getattr(importlib.import_module(module), cls)(cfg)
        else:
            model = getattr(transformers, model_cls)(cfg)
        return FirstOutput(model, key, **(call_kwargs or {})), inputs(cfg)
    return make


_TEXT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=1000,
             max_position_embeddings=64)
_DECODER = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=1000,
                max_position_embeddings=64)


def _text(cfg, seq=16):
    return _ids(cfg.vocab_size, seq, mask=True)


def _tokens(cfg, seq=16):
    return _ids(cfg.vocab_size, seq)


ENTRIES: dict[str, Entry] = {
    # ---- torchvision
    "tv_resnet18": Entry("torchvision", "conv, BN, maxpool, residual", _tv("resnet18")),
    "tv_mobilenet_v3_small": Entry("torchvision", "hardswish, hardsigmoid, squeeze-excite, depthwise 3x3/5x5",
                                   _tv("mobilenet_v3_small")),
    "tv_shufflenet_v2": Entry("torchvision", "channel shuffle, split, concat, depthwise",
                              _tv("shufflenet_v2_x0_5")),
    "tv_squeezenet": Entry("torchvision", "maxpool ceil_mode, concat, 1x1 conv head", _tv("squeezenet1_1")),
    "tv_efficientnet_b0": Entry("torchvision", "SiLU, squeeze-excite, depthwise 3x3/5x5", _tv("efficientnet_b0")),
    "tv_regnet_x": Entry("torchvision", "grouped conv", _tv("regnet_x_400mf")),
    "tv_googlenet": Entry("torchvision", "inception branches, concat, maxpool ceil_mode",
                          _tv("googlenet", aux_logits=False, init_weights=True)),
    "tv_lraspp": Entry("torchvision", "segmentation head, dilated conv, bilinear upsample",
                       _tv_seg("lraspp_mobilenet_v3_large")),
    "tv_mc3_video": Entry("torchvision", "3-D conv, 3-D pooling", _tv_video),
    "tv_vit": Entry("torchvision", "nn.MultiheadAttention, class token, GELU", _tv_vit),
    "tv_swin": Entry("torchvision", "shifted windows (roll), relative position bias, masks", _tv_swin),
    # ---- timm
    "timm_convnext_atto": Entry("timm", "depthwise 7x7, LayerNorm channels-last, GELU", _timm("convnext_atto")),
    "timm_edgenext": Entry("timm", "split depthwise, cross-covariance attention, LayerNorm",
                           _timm("edgenext_xx_small")),
    "timm_mobilevit": Entry("timm", "unfold/fold patches, attention, SiLU", _timm("mobilevit_xxs")),
    "timm_poolformer": Entry("timm", "GroupNorm, avg pool count_include_pad=False", _timm("poolformer_s12")),
    "timm_resnest": Entry("timm", "split attention (grouped conv, softmax over radix)", _timm("resnest14d")),
    "timm_ghostnet": Entry("timm", "ghost modules (concat, slice), hard sigmoid", _timm("ghostnet_050")),
    "timm_mixnet": Entry("timm", "mixed depthwise 3/5/7/9, split/concat, swish", _timm("mixnet_s")),
    "timm_efficientvit": Entry("timm", "ReLU linear attention, hardswish, depthwise", _timm("efficientvit_b0")),
    "timm_vit_sdpa": Entry("timm", "F.scaled_dot_product_attention, GELU, LayerNorm",
                           _timm("vit_tiny_patch16_224", img_size=64)),
    "timm_eva02": Entry("timm", "rotary embeddings, SwiGLU, SDPA", _timm("eva02_tiny_patch14_224", 56, img_size=56)),
    "timm_swin": Entry("timm", "window attention, relative position bias, roll",
                       _timm_class("timm.models.swin_transformer.SwinTransformer", 64, img_size=64, patch_size=4,
                                   window_size=4, embed_dim=32, depths=(2, 2), num_heads=(2, 4))),
    "timm_beit": Entry("timm", "relative position bias table (gather), layer scale",
                       _timm_class("timm.models.beit.Beit", 32, img_size=32, patch_size=8, embed_dim=64, depth=2,
                                   num_heads=4, use_rel_pos_bias=True)),
    "timm_nf_resnet": Entry("timm", "weight-standardized conv, scaled activations", _timm("nf_resnet26")),
    "timm_lcnet": Entry("timm", "hardswish, squeeze-excite, depthwise", _timm("lcnet_050")),
    "timm_mixer": Entry("timm", "MLP-Mixer token mixing (transposes)", _timm("mixer_s16_224", img_size=64)),
    "timm_hgnetv2": Entry("timm", "learnable affine, concat, maxpool ceil_mode", _timm("hgnetv2_b0")),
    "timm_fastvit": Entry("timm", "reparameterized conv, large-kernel depthwise, GELU", _timm("fastvit_t8")),
    "timm_inception_next": Entry("timm", "band depthwise (1x11, 11x1), split", _timm("inception_next_atto")),
    "timm_resnet_mish": Entry("timm", "Mish", _timm("resnet10t", act_layer="mish")),
    "timm_xcit": Entry("timm", "cross-covariance attention (normalize), Fourier position encoding",
                       _timm("xcit_nano_12_p16_224", img_size=64)),
    "timm_dla": Entry("timm", "hierarchical aggregation (concat), residual trees", _timm("dla34")),
    # ---- Hugging Face transformers
    "hf_bert": Entry("transformers", "encoder with attention mask (padding), GELU, embeddings",
                     _hf("BertConfig", "BertModel", _text, **_TEXT)),
    "hf_roberta": Entry("transformers", "cumsum position ids, attention mask", _hf("RobertaConfig", "RobertaModel",
                        _text, pad_token_id=1, **{**_TEXT, "max_position_embeddings": 66})),
    "hf_distilbert": Entry("transformers", "encoder, attention mask", _hf("DistilBertConfig", "DistilBertModel", _text,
                           dim=64, n_layers=2, n_heads=4, hidden_dim=128, vocab_size=1000,
                           max_position_embeddings=64)),
    "hf_albert": Entry("transformers", "shared layers, factorized embeddings, gelu_new (tanh)",
                       _hf("AlbertConfig", "AlbertModel", _text, embedding_size=32, **_TEXT)),
    "hf_gpt2": Entry("transformers", "causal mask, GELU-tanh, Conv1D", _hf("GPT2Config", "GPT2Model", _tokens,
                     n_embd=64, n_layer=2, n_head=4, vocab_size=1000, n_positions=64, bos_token_id=0,
                     eos_token_id=0)),
    "hf_llama": Entry("transformers", "RMSNorm, rotary, grouped-query attention, SiLU gate, causal",
                      _hf("LlamaConfig", "LlamaModel", _tokens, num_key_value_heads=2, **_DECODER)),
    "hf_qwen2": Entry("transformers", "GQA with qkv bias, rotary, RMSNorm", _hf("Qwen2Config", "Qwen2Model", _tokens,
                      num_key_value_heads=2, **_DECODER)),
    "hf_t5_encoder": Entry("transformers", "relative position buckets (log, integer index arithmetic), RMS-style norm",
                           _hf("T5Config", "T5EncoderModel", _tokens, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                               num_heads=4, vocab_size=1000)),
    "hf_clip_vision": Entry("transformers", "quick-GELU, class embedding, pre-LayerNorm",
                            _hf("CLIPVisionConfig", "CLIPVisionModel", lambda c: _image(32), hidden_size=64,
                                intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                                patch_size=8)),
    "hf_wav2vec2": Entry("transformers", "1-D convs, GroupNorm, grouped positional conv, GELU",
                         _hf("Wav2Vec2Config", "Wav2Vec2Model", lambda c: (torch.randn(1, 1600),), hidden_size=64,
                             num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                             conv_dim=(32, 32, 32), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3),
                             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)),
    "hf_whisper_encoder": Entry("transformers", "1-D conv stem, sinusoidal positions, GELU",
                                _hf("WhisperConfig", "transformers.models.whisper.modeling_whisper.WhisperEncoder",
                                    lambda c: (torch.randn(1, 16, 64),), d_model=64, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
                                    decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                                    num_mel_bins=16, max_source_positions=32, vocab_size=100, pad_token_id=0,
                                    bos_token_id=0, eos_token_id=0, decoder_start_token_id=0)),
    "hf_segformer": Entry("transformers", "efficient attention (strided conv reduction), Mix-FFN depthwise, "
                          "bilinear upsample", _hf("SegformerConfig", "SegformerForSemanticSegmentation",
                                                   lambda c: _image(64), num_labels=4, hidden_sizes=[16, 32, 48, 64],
                                                   decoder_hidden_size=64, depths=[1, 1, 1, 1])),
    "hf_convnextv2": Entry("transformers", "global response norm, depthwise 7x7, LayerNorm channels-last",
                           _hf("ConvNextV2Config", "ConvNextV2Model", lambda c: _image(64), hidden_sizes=[16, 32, 64, 128],
                               depths=[1, 1, 2, 1])),
}

NAMES = list(ENTRIES)

# The part CI builds and checks (tests/test_corpus.py), chosen to cover the families cheaply.
CI = ["tv_mobilenet_v3_small", "tv_shufflenet_v2", "tv_swin", "timm_convnext_atto", "timm_vit_sdpa",
      "hf_bert", "hf_llama", "hf_t5_encoder", "hf_wav2vec2"]


def _like_trained(model: torch.nn.Module) -> None:
    """Fresh models hide bugs: zero-initialized residual branches, layer scales of 1e-6 and
    identity BatchNorm statistics make whole blocks (or the output) vanish below any tolerance.
    Give every constant-filled float parameter or buffer a spread around its value, and
    BatchNorm statistics like a trained network's."""
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) and mod.running_var is not None:
                mod.running_mean.normal_(0.0, 0.1)
                mod.running_var.uniform_(0.5, 2.0)
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point() and t.numel() > 1 and bool((t == t.flatten()[0]).all()):
                base = float(t.flatten()[0])
                t.add_(torch.randn_like(t) * 0.1 * max(abs(base), 0.1))


def make(name: str, seed: int = 0) -> tuple[torch.nn.Module, tuple]:
    if name not in ENTRIES:
        raise KeyError(f"unknown corpus model {name!r}; one of {', '.join(NAMES)}")
    torch.manual_seed(seed)
    model, inputs = ENTRIES[name].make()
    _like_trained(model)
    return model.eval(), inputs
