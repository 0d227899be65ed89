"""The multi-task model: one shared torchvision encoder, FC heads for T1/T2, an LSTM decoder for T3."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ..config import SUPPORTED_BACKBONES, TEACHER_HEAD_DROPOUT
from ..data.text import EOS_ID, PAD_ID, SOS_ID

# How to cut each torchvision family into an encoder (image -> feature map) and where its last
# convolutional block sits (the Grad-CAM target layer).
_FAMILIES = {
    "resnet": dict(drop_last=2, cam_layer="7"),           # children: conv1 bn1 relu maxpool layer1-4 | avgpool fc
    "wide_resnet": dict(drop_last=2, cam_layer="7"),
    "shufflenet": dict(drop_last=1, cam_layer="5"),       # conv1 maxpool stage2-4 conv5 | fc
    "mobilenet": dict(attr="features", cam_layer="-1"),   # features | avgpool classifier
    "efficientnet": dict(attr="features", cam_layer="-1"),
}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
POOL_WIDTH = {"mean": 1, "mean+halves": 3}   # config.POOLS -> pooled feature size, in feature-map channels


def _family(name: str) -> dict:
    for prefix, spec in sorted(_FAMILIES.items(), key=lambda kv: -len(kv[0])):
        if name.startswith(prefix):
            return spec
    raise ValueError(f"backbone={name!r}: choose one of {SUPPORTED_BACKBONES}")


def _imagenet_state(name: str) -> tuple[dict | None, str]:
    """ImageNet weights from torchvision's local cache only: never a download."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    file = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not file.exists():
        return None, (f"no cached ImageNet weights for {name} at {file}; starting from random initialisation. "
                      f"To use them, put the file there or pass pretrained='/path/to/{file.name}'.")
    return torch.load(file, map_location="cpu", weights_only=True), f"ImageNet weights from {file}"


def _file_state(path: str) -> tuple[dict, str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"pretrained={path!r}: no such file. Give a torchvision state-dict (.pth), "
                                "'imagenet' or None.")
    state = torch.load(p, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # common wrappers
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state, f"weights from {p}"


def _dilation(name: str, output_stride: int) -> dict:
    """torchvision's own switch for a last stage at stride 16 (dilated): 4x4 feature maps at 64 px, sharper CAMs."""
    if output_stride == 32:
        return {}
    if output_stride == 16 and name.startswith("mobilenet_v3"):
        return {"dilated": True}
    if output_stride == 16 and name in ("resnet50", "resnet101", "wide_resnet50_2"):
        return {"replace_stride_with_dilation": [False, False, True]}
    raise ValueError(f"output_stride={output_stride} with backbone={name!r}: 32 works for every backbone; "
                     "16 for mobilenet_v3_small/large, resnet50, resnet101, wide_resnet50_2")


def build_encoder(name: str, pretrained: str | None = None, output_stride: int = 32) -> tuple[nn.Module, int, str, str]:
    """(encoder, feature channels, CAM layer name inside the encoder, where the weights came from)."""
    if name not in SUPPORTED_BACKBONES:
        raise ValueError(f"backbone={name!r}: choose one of {SUPPORTED_BACKBONES}")
    spec = _family(name)
    net = torchvision.models.get_model(name, weights=None, **_dilation(name, output_stride))
    state, note = (None, "random initialisation") if pretrained is None else (
        _imagenet_state(name) if pretrained == "imagenet" else _file_state(pretrained))
    if state is not None:
        net.load_state_dict(state, strict=False)
    elif pretrained is not None:
        warnings.warn(note, stacklevel=2)
    if "attr" in spec:
        encoder = getattr(net, spec["attr"])
    else:
        encoder = nn.Sequential(*list(net.children())[: -spec["drop_last"]])
    for m in encoder.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            # torchvision's MobileNetV3/EfficientNet use momentum 0.01, tuned for ImageNet-length runs;
            # in a few hundred steps the running statistics would stay near their init and eval collapses.
            m.momentum = 0.1
    with torch.no_grad():
        channels = encoder.eval()(torch.zeros(1, 3, 64, 64)).shape[1]
    encoder.train()
    layer = spec["cam_layer"] if spec["cam_layer"] != "-1" else str(len(encoder) - 1)
    return encoder, channels, layer, note


class ClassHead(nn.Sequential):
    """The paper's T1/T2 head: FC + ReLU, then the class layer (softmax lives in the loss)."""

    def __init__(self, in_dim: int, hidden: int, n_classes: int, dropout: float = 0.2):
        super().__init__(nn.Dropout(dropout), nn.Linear(in_dim, hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, n_classes))


class CaptionDecoder(nn.Module):
    """T3: an LSTM whose state starts from the image features; teacher forcing, greedy and beam decoding."""

    def __init__(self, feat_dim: int, vocab_size: int, embed_dim: int, hidden: int):
        super().__init__()
        self.init_h, self.init_c = nn.Linear(feat_dim, hidden), nn.Linear(feat_dim, hidden)
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.lstm = nn.LSTM(embed_dim, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab_size)

    def init_state(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tanh(self.init_h(feats)).unsqueeze(0), torch.tanh(self.init_c(feats)).unsqueeze(0)  # (1, B, H)

    def forward(self, feats: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: logits (B, L-1, V) for tokens[:, 1:] given tokens[:, :-1]."""
        y, _ = self.lstm(self.embed(tokens[:, :-1]), self.init_state(feats))  # (B, L-1, H)
        return self.out(y)

    @torch.no_grad()
    def sample(self, feats: torch.Tensor, max_len: int, n: int, generator: torch.Generator) -> torch.Tensor:
        """n sentences per image drawn word by word from the model (temperature 1): token ids (B, n, max_len)."""
        B = feats.shape[0]
        h, c = (s.repeat_interleave(n, dim=1) for s in self.init_state(feats))       # (1, B*n, H)
        tokens = torch.full((B * n, max_len), PAD_ID, dtype=torch.long, device=feats.device)
        tokens[:, 0] = SOS_ID
        done = torch.zeros(B * n, dtype=torch.bool, device=feats.device)
        for t in range(1, max_len):
            y, (h, c) = self.lstm(self.embed(tokens[:, t - 1: t]), (h, c))
            logits = self.out(y[:, 0]).float()
            logits[:, [PAD_ID, SOS_ID]] = float("-inf")        # never inside a sentence
            word = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)[:, 0]
            if t == max_len - 1:                          # the last slot closes the sentence
                word = torch.full_like(word, EOS_ID)
            tokens[:, t] = torch.where(done, PAD_ID, word)
            done = done | (word == EOS_ID)
            if done.all():
                break
        return tokens.reshape(B, n, max_len)

    @torch.no_grad()
    def generate(self, feats: torch.Tensor, max_len: int, beam_size: int = 1) -> torch.Tensor:
        """Token ids (B, max_len): <sos> ... <eos> then <pad>. beam_size=1 is greedy decoding."""
        return self.beams(feats, max_len, beam_size)[:, 0]

    @torch.no_grad()
    def beams(self, feats: torch.Tensor, max_len: int, beam_size: int) -> torch.Tensor:
        """Beam search's k finished hypotheses per image, best first by length-normalised log-probability (no bias
        to short sentences): token ids (B, k, max_len)."""
        B, k, V = feats.shape[0], beam_size, self.out.out_features
        h, c = (s.repeat_interleave(k, dim=1) for s in self.init_state(feats))        # (1, B*k, H)
        tokens = torch.full((B * k, max_len), PAD_ID, dtype=torch.long, device=feats.device)
        tokens[:, 0] = SOS_ID
        scores = torch.zeros(B, k, device=feats.device)
        scores[:, 1:] = float("-inf")                     # all beams start as one hypothesis
        done = torch.zeros(B * k, dtype=torch.bool, device=feats.device)
        for t in range(1, max_len):
            y, (h, c) = self.lstm(self.embed(tokens[:, t - 1 : t]), (h, c))
            logp = F.log_softmax(self.out(y[:, 0]).float(), dim=-1)                   # (B*k, V)
            logp[done] = float("-inf")
            logp[done, PAD_ID] = 0.0                      # a finished hypothesis only pads, at no cost
            if t == max_len - 1:                          # the last slot must close the sentence
                logp[~done] = torch.where(torch.arange(V, device=feats.device) == EOS_ID, logp[~done], float("-inf"))
            top, idx = (scores.reshape(-1, 1) + logp).reshape(B, k * V).topk(k, dim=1)  # (B, k)
            src = (torch.arange(B, device=feats.device).unsqueeze(1) * k + idx // V).reshape(-1)
            word = (idx % V).reshape(-1)
            tokens, h, c, done = tokens[src], h[:, src], c[:, src], done[src]
            tokens[:, t] = word
            done = done | (word == EOS_ID)
            scores = top
            if done.all():
                break
        length = (tokens[:, 1:] != PAD_ID).sum(1).clamp(min=1).reshape(B, k)
        order = (scores / length).argsort(dim=1, descending=True, stable=True)  # ties: beam order, as argmax took
        return tokens.reshape(B, k, max_len).gather(1, order.unsqueeze(2).expand(B, k, max_len))


class MTLModel(nn.Module):
    """Shared encoder + the heads of `tasks`. Takes images in [0, 1]; ImageNet normalisation is inside."""

    def __init__(self, tasks: tuple[str, ...], n_coarse: int, n_fine: int, vocab_size: int,
                 backbone: str = "resnet50", pretrained: str | None = None,
                 head_hidden: int = 256, embed_dim: int = 128, lstm_hidden: int = 256, output_stride: int = 32,
                 head_dropout: float = TEACHER_HEAD_DROPOUT, pool: str = "mean"):
        super().__init__()
        if pool not in POOL_WIDTH:
            raise ValueError(f"pool={pool!r}: choose one of {sorted(POOL_WIDTH)}")
        self.tasks, self.pool = tuple(tasks), pool
        self.encoder, channels, self.cam_layer_name, self.init_note = build_encoder(backbone, pretrained, output_stride)
        feat_dim = POOL_WIDTH[pool] * channels
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.heads = nn.ModuleDict()
        if "T1" in tasks:
            self.heads["T1"] = ClassHead(feat_dim, head_hidden, n_coarse, head_dropout)
        if "T2" in tasks:
            self.heads["T2"] = ClassHead(feat_dim, head_hidden, n_fine, head_dropout)
        self.decoder = CaptionDecoder(feat_dim, vocab_size, embed_dim, lstm_hidden) if "T3" in tasks else None

    @property
    def cam_layer(self) -> nn.Module:
        """The encoder's last convolutional block: where Grad-CAM looks."""
        return self.encoder[int(self.cam_layer_name)]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> pooled features (B, D).

        "mean" is the paper's global average. "mean+halves" adds the means of the left and right halves of the
        feature map: a global average cannot tell on which side the optic disc lies, so it cannot tell a left
        eye from a right one, which every T3 sentence names.
        """
        fmap = self.encoder((images - self.mean) / self.std)   # (B, C, h, w)
        pooled = fmap.mean(dim=(2, 3))
        if self.pool == "mean":
            return pooled
        left, right = F.adaptive_avg_pool2d(fmap, (1, 2)).flatten(1, 2).unbind(-1)   # (B, C) each
        return torch.cat([pooled, left, right], dim=1)

    def forward(self, images: torch.Tensor, captions: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Logits per task: T1 (B, C1), T2 (B, C2), and T3 (B, L-1, V) when captions are given."""
        feats = self.features(images)
        out = {t: head(feats) for t, head in self.heads.items()}
        if self.decoder is not None and captions is not None:
            out["T3"] = self.decoder(feats, captions)
        return out

    @torch.no_grad()
    def generate(self, images: torch.Tensor, max_len: int, beam_size: int = 1) -> torch.Tensor:
        if self.decoder is None:
            raise ValueError(f"this model was trained on {self.tasks}: it has no T3 decoder")
        return self.decoder.generate(self.features(images), max_len, beam_size)


def build_model(cfg, tasks: tuple[str, ...], n_coarse: int, n_fine: int, vocab_size: int,
                student: bool = False) -> MTLModel:
    """The model a config describes (seeded by the caller); a student's heads get cfg.head_dropout (its noise)."""
    return MTLModel(tasks, n_coarse, n_fine, vocab_size, backbone=cfg.backbone, pretrained=cfg.pretrained,
                    head_hidden=cfg.head_hidden, embed_dim=cfg.embed_dim, lstm_hidden=cfg.lstm_hidden,
                    output_stride=cfg.output_stride, pool=cfg.pool,
                    head_dropout=cfg.head_dropout if student else TEACHER_HEAD_DROPOUT)
