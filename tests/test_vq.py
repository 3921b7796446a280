"""VQ tokenizer: upstream layout and outputs, encode/decode shapes, the codebook lookup."""
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from core.models import vq
from core.models.vq import VQConfig, VQModel

FIX = Path(__file__).parent / "fixtures"


def test_vq16_state_dict_matches_upstream_manifest():
    ref = json.loads((FIX / "llamagen_state_dicts.json").read_text())["VQ-16"]
    with torch.device("meta"):
        m = vq.build("VQ-16")
    sd = m.state_dict()
    assert {k: list(v.shape) for k, v in sd.items()} == ref["state_dict"]
    assert sum(p.numel() for p in m.parameters()) == ref["params"]


def test_vq8_downsamples_by_8():
    cfg = vq.config_for("VQ-8", image_size=256)
    assert cfg.downsample == 8 and cfg.grid == (32, 32)
    assert vq.config_for("VQ-16", image_size=384).grid == (24, 24)


def test_codes_and_reconstruction_equal_upstream():
    g = torch.load(FIX / "upstream_golden.pt", weights_only=True)["vq"]
    m = VQModel(VQConfig(**g["args"])).eval()
    m.load_state_dict(g["state_dict"], strict=True)
    codes = m.encode(g["images"])
    assert codes.dtype == torch.long and codes.shape == (2, 64)
    assert torch.equal(codes, g["codes"])
    with torch.no_grad():
        assert (m.decode(g["codes"]) - g["recon"]).abs().max() <= 1e-4


def small() -> VQModel:
    torch.manual_seed(0)
    return VQModel(VQConfig(codebook_size=16, codebook_embed_dim=4, ch=32, encoder_ch_mult=[1, 2],
                            decoder_ch_mult=[1, 2], z_channels=32, num_res_blocks=1, image_size=16)).eval()


def test_encode_decode_shapes():
    m = small()
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    ids = m.encode(x)
    assert ids.shape == (3, 64) and ids.dtype == torch.long and int(ids.max()) < 16
    with torch.no_grad():
        assert m.decode(ids).shape == (3, 3, 16, 16)


def test_lookup_is_nearest_l2_normalised_code():
    m = small()
    book = F.normalize(m.quantize.embedding.weight, dim=-1)
    # a latent equal to (a positive multiple of) code k must map to k: the lookup normalises both sides
    ks = torch.tensor([3, 7, 0, 15])
    z = (book[ks] * torch.tensor([[0.5], [2.0], [1.0], [7.0]])).T.reshape(1, 4, 2, 2)
    assert torch.equal(m.quantize.nearest(z).view(-1), ks)
    # embed() of tokens is the normalised codebook row, arranged on the grid in raster order
    lat = m.embed(ks.view(1, 4), grid=(2, 2))
    assert torch.allclose(lat[0, :, 0, 1], book[7])
    # probabilities mix codebook rows (the differentiable path of the STE baseline)
    probs = F.one_hot(ks, 16).float().view(1, 4, 16)
    assert torch.allclose(m.embed(probs, grid=(2, 2)), lat)


def test_training_path_has_straight_through_gradients_and_losses():
    m = small().train()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    rec, losses = m.forward_train(x)
    assert set(losses) == {"vq", "commit"}
    (F.mse_loss(rec, x) + losses["vq"] + losses["commit"]).backward()
    assert m.encoder.conv_in.weight.grad is not None and m.encoder.conv_in.weight.grad.abs().sum() > 0
    assert m.quantize.embedding.weight.grad.abs().sum() > 0
