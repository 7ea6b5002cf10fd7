"""WeNet state-dict names <-> ume state-dict names, one table used in both directions.

    WeNet                                                 ume
    encoder.global_cmvn.{mean,istd}                       cmvn_{mean,istd}
    encoder.embed.conv.{0,2,4}.*                          encoder.embed.conv.{0,2,4}.*
    encoder.embed.out.0.* (conv2d) | embed.linear.*      encoder.embed.out.*
    encoder.encoders.N.feed_forward{,_macaron}.w_{1,2}.*  encoder.blocks.N.ffn{,_macaron}.w_{1,2}.*
    encoder.encoders.N.self_attn.linear_{q,k,v,out,pos}.*, pos_bias_{u,v}   (same under blocks.N)
    encoder.encoders.N.conv_module.{pointwise_conv1,depthwise_conv,norm,pointwise_conv2}.*
                                                          encoder.blocks.N.conv.{pw1,dw,norm,pw2}.*
    encoder.encoders.N.norm_{ff,mha,conv,final,ff_macaron}.*   (same under blocks.N)
    encoder.after_norm.*                                  encoder.after_norm.*
    decoder.{left,right}_decoder.* (bitransformer) | decoder.* (transformer)
                                                          decoder.{left,right}.*
        embed.0.weight -> embed.weight, after_norm -> norm, output_layer -> out,
        decoders.N.{self_attn,src_attn,norm1,norm2,norm3}.* -> blocks.N.*, feed_forward -> ffn
    ctc.ctc_lo.*                                          ctc.*
  MoE FFNs (WeNet MoEFFNLayer):
    <ffn>.gate.weight (E, D)                              <ffn>.router.weight (E, D)
    <ffn>.experts.J.w_1.weight (H, D), .bias (H,)         <ffn>.experts.w_1[J] (D, H), b_1[J]
    <ffn>.experts.J.w_2.weight (D, H), .bias (D,)         <ffn>.experts.w_2[J] (H, D), b_2[J]
  WeNet only: the sinusoid tables encoder.embed.pos_enc.pe and <decoder>.embed.1.pe (checked
  against ume's encodings on import, regenerated on export).

Example:
    >>> table = KeyTable(subsampling=8, bidirectional=True)
    >>> table.to_ume("encoder.encoders.3.conv_module.depthwise_conv.weight")
    'encoder.blocks.3.conv.dw.weight'
    >>> table.to_wenet("decoder.right.out.bias")
    'decoder.right_decoder.output_layer.bias'
"""

from __future__ import annotations

import re

_FIELD = {"i": r"(?P<i>\d+)", "rest": r"(?P<rest>.+)"}
_ENC_MODS = "self_attn|norm_ff_macaron|norm_ff|norm_mha|norm_conv|norm_final"
_DEC_MODS = "self_attn|src_attn|norm1|norm2|norm3"


def _regex(pattern: str) -> re.Pattern:
    out, pos = "", 0
    for m in re.finditer(r"\{(\w+)\}", pattern):
        out += re.escape(pattern[pos : m.start()]) + _FIELD[m.group(1)]
        pos = m.end()
    return re.compile(out + re.escape(pattern[pos:]) + "$")


class KeyTable:
    """Name pairs for one model shape (stem kind and decoder kind change WeNet's names)."""

    def __init__(self, subsampling: int, bidirectional: bool) -> None:
        out = "encoder.embed.out.0" if subsampling == 4 else "encoder.embed.linear"
        pairs = [
            ("encoder.global_cmvn.mean", "cmvn_mean"),
            ("encoder.global_cmvn.istd", "cmvn_istd"),
            ("encoder.embed.conv.{i}.{rest}", "encoder.embed.conv.{i}.{rest}"),
            (out + ".{rest}", "encoder.embed.out.{rest}"),
            ("encoder.after_norm.{rest}", "encoder.after_norm.{rest}"),
            (
                "encoder.encoders.{i}.feed_forward_macaron.{rest}",
                "encoder.blocks.{i}.ffn_macaron.{rest}",
            ),
            ("encoder.encoders.{i}.feed_forward.{rest}", "encoder.blocks.{i}.ffn.{rest}"),
            ("ctc.ctc_lo.{rest}", "ctc.{rest}"),
        ]
        for wenet, ume in (
            ("pointwise_conv1", "pw1"),
            ("depthwise_conv", "dw"),
            ("norm", "norm"),
            ("pointwise_conv2", "pw2"),
        ):
            pairs.append(
                (
                    "encoder.encoders.{i}.conv_module." + wenet + ".{rest}",
                    "encoder.blocks.{i}.conv." + ume + ".{rest}",
                )
            )
        dirs = (
            [("decoder.left_decoder", "decoder.left"), ("decoder.right_decoder", "decoder.right")]
            if bidirectional
            else [("decoder", "decoder.left")]
        )
        for w, u in dirs:
            pairs += [
                (w + ".embed.0.weight", u + ".embed.weight"),
                (w + ".after_norm.{rest}", u + ".norm.{rest}"),
                (w + ".output_layer.{rest}", u + ".out.{rest}"),
                (w + ".decoders.{i}.feed_forward.{rest}", u + ".blocks.{i}.ffn.{rest}"),
            ]
        self._pairs = [(_regex(w), w, _regex(u), u) for w, u in pairs]
        # modules with the same name on both sides, under renamed block lists
        blocks = [("encoder.encoders", "encoder.blocks", _ENC_MODS)]
        blocks += [(w + ".decoders", u + ".blocks", _DEC_MODS) for w, u in dirs]
        self._blocks = [
            (
                re.compile(re.escape(w) + r"\.(\d+)\.(" + mods + r")\.(.+)$"),
                re.compile(re.escape(u) + r"\.(\d+)\.(" + mods + r")\.(.+)$"),
                w,
                u,
            )
            for w, u, mods in blocks
        ]
        self.pe_keys = ["encoder.embed.pos_enc.pe"] + [w + ".embed.1.pe" for w, _ in dirs]

    @staticmethod
    def _apply(key: str, rx: re.Pattern, template: str) -> str | None:
        m = rx.match(key)
        if m is None:
            return None
        return template.format(**m.groupdict())

    def to_ume(self, key: str) -> str | None:
        """WeNet name -> ume name (FFN internals unchanged), or None if no rule matches."""
        for w_rx, _, _, u in self._blocks:
            m = w_rx.match(key)
            if m:
                return f"{u}.{m.group(1)}.{m.group(2)}.{m.group(3)}"
        for w_rx, _, _, u in self._pairs:
            out = self._apply(key, w_rx, u)
            if out is not None:
                return out
        return None

    def to_wenet(self, key: str) -> str | None:
        """ume name -> WeNet name, or None if no rule matches."""
        for _, u_rx, w, _ in self._blocks:
            m = u_rx.match(key)
            if m:
                return f"{w}.{m.group(1)}.{m.group(2)}.{m.group(3)}"
        for _, w, u_rx, _ in self._pairs:
            out = self._apply(key, u_rx, w)
            if out is not None:
                return out
        return None


# inside an MoE FFN: WeNet per-expert name -> (ume stacked tensor, transpose)
MOE_EXPERT = re.compile(r"(?P<ffn>.+)\.experts\.(?P<e>\d+)\.(?P<w>w_1|w_2)\.(?P<p>weight|bias)$")
STACKED = {
    ("w_1", "weight"): ("w_1", True),
    ("w_1", "bias"): ("b_1", False),
    ("w_2", "weight"): ("w_2", True),
    ("w_2", "bias"): ("b_2", False),
}
