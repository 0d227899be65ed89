import numpy as np
import pytest
import torch
from conftest import fake_data, model_for

from mtkd_utils.config import TASKS, task_subsets
from mtkd_utils.data.text import EOS_ID, PAD_ID, SOS_ID
from mtkd_utils.presets import config as preset
from mtkd_utils.train.engine import MultiTaskLoss, decode_sentences
from mtkd_utils.train.model import CaptionDecoder, MTLModel, build_encoder


@pytest.mark.parametrize("tasks", task_subsets(TASKS), ids=lambda t: "+".join(t))
def test_every_task_subset_trains_for_a_step(tasks):
    data = fake_data()
    model = model_for(tasks, data)
    rows = np.arange(4)
    x = torch.from_numpy(data.images[rows]).permute(0, 3, 1, 2).float() / 255
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = MultiTaskLoss(data, {"T1": 1, "T2": 1, "T3": 1}, alpha=0.95)(model, x, rows)
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert torch.isfinite(loss) and loss > 0
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("encoder") for k in changed)
    for t in tasks:
        prefix = "decoder" if t == "T3" else f"heads.{t}"
        assert any(k.startswith(prefix) for k in changed), t


def test_decoding_stops_at_eos_and_respects_max_length():
    torch.manual_seed(0)
    dec = CaptionDecoder(feat_dim=4, vocab_size=6, embed_dim=3, hidden=5)
    feats = torch.randn(3, 4)
    with torch.no_grad():
        dec.out.bias.zero_()
        dec.out.weight.zero_()
        dec.out.bias[4] = 5.0                                  # always the word 4 ...
    for beam in (1, 3):
        out = dec.generate(feats, max_len=7, beam_size=beam)
        assert out.shape == (3, 7) and (out[:, 0] == SOS_ID).all()
        assert (out[:, -1] == EOS_ID).all() and (out[:, 1:-1] == 4).all()   # ... until the length limit closes it
    with torch.no_grad():
        dec.out.bias[EOS_ID] = 10.0                            # now <eos> first
    out = dec.generate(feats, max_len=7, beam_size=2)
    assert (out[:, 1] == EOS_ID).all() and (out[:, 2:] == PAD_ID).all()


def test_sampled_sentences_are_well_formed_seeded_and_follow_the_model():
    torch.manual_seed(0)
    dec = CaptionDecoder(feat_dim=4, vocab_size=8, embed_dim=3, hidden=5)
    feats = torch.randn(3, 4)
    draw = lambda seed: dec.sample(feats, 9, 20, torch.Generator().manual_seed(seed))
    out = draw(0)
    assert out.shape == (3, 20, 9) and (out[..., 0] == SOS_ID).all() and torch.equal(out, draw(0))
    assert not torch.equal(out, draw(1))
    for sentence in out.reshape(-1, 9).tolist():             # <sos> words <eos>, then only <pad>
        end = sentence.index(EOS_ID)
        assert SOS_ID not in sentence[1:] and set(sentence[end + 1:]) <= {PAD_ID} and PAD_ID not in sentence[:end]
    with torch.no_grad():
        dec.out.weight.zero_()
        dec.out.bias.fill_(-30.0)
        dec.out.bias[5], dec.out.bias[EOS_ID] = 0.0, 0.0          # two words equally likely, the rest never
    words = dec.sample(feats, 9, 200, torch.Generator().manual_seed(0))[..., 1]
    assert set(words.unique().tolist()) == {5, EOS_ID} and 0.4 < (words == 5).float().mean() < 0.6


def test_mbr_decoding_says_one_of_its_samples_the_same_under_a_seed():
    data = fake_data(8)
    model = model_for(("T1", "T3"), data).eval()
    feats = model.features(torch.from_numpy(data.images[:4]).permute(0, 3, 1, 2).float() / 255)
    say = lambda seed: decode_sentences(model.decoder, feats, data.vocab, 8, mbr_samples=6,
                                        generator=torch.Generator().manual_seed(seed))
    assert say(0) == say(0) != say(1)
    drawn = model.decoder.sample(feats, 8, 6, torch.Generator().manual_seed(0)).tolist()
    assert all(words in [data.vocab.decode(t) for t in image] for words, image in zip(say(0), drawn))
    assert decode_sentences(model.decoder, feats, data.vocab, 8) == [data.vocab.decode(t) for t in
                                                                      model.decoder.generate(feats, 8).tolist()]


def test_beam_search_never_scores_worse_than_greedy():
    torch.manual_seed(1)
    dec = CaptionDecoder(feat_dim=4, vocab_size=9, embed_dim=4, hidden=8).eval()
    feats = torch.randn(5, 4)

    def logprob(tokens):
        logits = dec(feats, tokens)
        lp = torch.log_softmax(logits, -1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
        mask = tokens[:, 1:] != PAD_ID
        return (lp * mask).sum(1) / mask.sum(1)

    with torch.no_grad():
        greedy, beam = dec.generate(feats, 8, 1), dec.generate(feats, 8, 4)
        assert (logprob(beam) >= logprob(greedy) - 1e-5).all()


def test_imagenet_weights_fall_back_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))            # an empty cache: nothing may be downloaded
    with pytest.warns(UserWarning, match="no cached ImageNet weights.*random initialisation"):
        _, _, _, note = build_encoder("resnet18", "imagenet")
    assert "random initialisation" in note
    with pytest.raises(FileNotFoundError, match="no such file"):
        build_encoder("resnet18", str(tmp_path / "missing.pth"))


def test_weights_from_a_file_are_loaded(tmp_path):
    import torchvision
    torch.manual_seed(3)
    net = torchvision.models.resnet18()
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    enc, channels, _, note = build_encoder("resnet18", str(tmp_path / "r18.pth"))
    assert channels == 512 and "r18.pth" in note
    assert torch.equal(enc[0].weight, net.conv1.weight)


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(ValueError, match="choose one of"):
        build_encoder("vgg16")


def test_config_rejects_bad_parameters():
    for bad, msg in [(dict(alpha_grid=(0.5, 1.2)), "alpha_grid"), (dict(tau_grid=(0.0,)), "tau_grid"),
                     (dict(epochs="5"), "epochs"), (dict(kd_mode="sometimes"), "kd_mode"),
                     (dict(t3_kd="full"), "t3_kd"),
                     (dict(labeled_share=1.0), "labeled_share"), (dict(student_passes=0), "student_passes")]:
        with pytest.raises(ValueError, match=msg):
            preset("smoke", **bad)


def test_half_pooling_tells_a_mirrored_image_apart_and_the_global_mean_cannot():
    # laterality lives in where the disc is: mirroring the feature map must swap the two half means and keep the
    # global one (an identity encoder, so that the map is the image and mirrors exactly with it)
    torch.manual_seed(0)
    kw = dict(tasks=("T1", "T3"), n_coarse=5, n_fine=8, vocab_size=20, backbone="resnet18", head_hidden=16,
              embed_dim=8, lstm_hidden=16)
    halves, plain = MTLModel(pool="mean+halves", **kw), MTLModel(pool="mean", **kw)
    assert halves.heads["T1"][1].in_features == 3 * plain.heads["T1"][1].in_features == 3 * 512
    assert halves.decoder.init_h.in_features == 3 * 512
    halves.encoder = plain.encoder = torch.nn.Identity()
    images = torch.rand(2, 3, 8, 8)
    f, g = halves.features(images), halves.features(images.flip(3))
    assert f.shape == (2, 9) and plain.features(images).shape == (2, 3)
    mean, left, right = f.split(3, dim=1)
    mean_m, left_m, right_m = g.split(3, dim=1)
    torch.testing.assert_close(mean, plain.features(images))
    torch.testing.assert_close(mean, mean_m)
    torch.testing.assert_close(left, right_m)
    torch.testing.assert_close(right, left_m)
    x = (images - halves.mean) / halves.std                                    # by hand: columns 0-3 and 4-7
    torch.testing.assert_close(left, x[..., :4].mean(dim=(2, 3)))
    torch.testing.assert_close(right, x[..., 4:].mean(dim=(2, 3)))
    with pytest.raises(ValueError, match="pool='max'"):
        MTLModel(pool="max", **kw)
    with pytest.raises(ValueError, match="pool='max'"):
        preset("smoke", pool="max")
