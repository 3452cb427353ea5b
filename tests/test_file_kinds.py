"""A file's kind is told by its structure, never by one byte (``io.kinds``): safetensors files of
every header-length low byte, files whose first bytes mimic another format's magic, truncated
and lying headers, and every other kind still read (or refused) as what it is."""
import json
import pickle
import struct
import zipfile

import numpy as np
import pytest
import safetensors.numpy as stnp

import resnets_jax as rj
from resnets_jax.io import kinds
from resnets_jax.io.errors import CheckpointError
from resnets_jax.io.safetensors import write_safetensors

TENSORS = {"stem.conv.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2), "head.fc.bias": np.ones(3)}
# a U8 tensor holding an empty zip's end record: zipfile.is_zipfile finds it at the end of the file
ZIP_TAIL = {"zz": np.frombuffer(b"PK\x05\x06" + bytes(18), np.uint8)}


def _crafted(tensors, n: int) -> bytes:
    """A safetensors file whose header is exactly ``n`` bytes (metadata padded: any length, as the
    format allows; the library's writers pad to a multiple of 8)."""
    header, offset = {}, 0
    for k, v in tensors.items():
        header[k] = {"dtype": {"float32": "F32", "float64": "F64", "uint8": "U8"}[v.dtype.name],
                     "shape": list(v.shape), "data_offsets": [offset, offset + v.nbytes]}
        offset += v.nbytes
    blob = json.dumps({"__metadata__": {"pad": ""}, **header}).encode()
    blob = blob.replace(b'"pad": ""', b'"pad": "' + b"x" * (n - len(blob)) + b'"')
    assert len(blob) == n
    return struct.pack("<Q", n) + blob + b"".join(v.tobytes() for v in tensors.values())


def _assert_read_as_safetensors(path, tensors):
    file = kinds.open_checkpoint(path)
    assert file.kind == kinds.SAFETENSORS, (path, file.kind)
    sd = rj.load_state_dict(path)
    assert sorted(sd) == sorted(tensors)
    for k, v in tensors.items():
        assert sd[k].dtype == v.dtype and np.array_equal(sd[k], v), k
    assert not rj.io.is_flax_checkpoint(path)


def _error(path) -> str:
    with pytest.raises(CheckpointError) as e:
        rj.load_state_dict(path)
    message = str(e.value)
    assert "\n" not in message and str(path) in message
    return message


@pytest.mark.parametrize("low", range(0, 256, 64), ids=lambda low: f"low{low:#04x}+")
def test_every_header_length_low_byte(tmp_path, low):
    """Each of the 256 values of the length's low byte (header lengths 256..511, unpadded), in
    four slices: the file is read as safetensors, as the library reads it; cut inside its data or
    inside its header, it is refused as a safetensors file cut short, never taken for another kind."""
    for n in range(256 + low, 256 + low + 64):
        data = _crafted(TENSORS, n)
        assert data[0] == n & 0xFF
        path = tmp_path / f"{n}.safetensors"
        path.write_bytes(data)
        assert stnp.load_file(str(path)).keys() == TENSORS.keys()  # the library agrees it is one
        _assert_read_as_safetensors(path, TENSORS)
        path.write_bytes(data[:-5])
        assert f"needs bytes up to {len(data)}, the file has {len(data) - 5})" in _error(path)
        path.write_bytes(data[: 8 + n // 2])
        assert f"a safetensors file cut short? its header claims {n} bytes, the file has {n // 2}" in _error(path)


@pytest.mark.parametrize("writer", ["resnets_jax", "safetensors"])
def test_every_padded_low_byte_from_both_writers(tmp_path, writer):
    """Writers pad the header to a multiple of 8, so 32 low bytes occur (0x80: pickle's PROTO;
    0x88: a msgpack fixmap; 0x50: a zip's 'P'); both writers' files of each are read back."""
    found = {}
    for pad in range(300):
        path = tmp_path / f"{pad}.safetensors"
        meta = {"pad": "x" * pad}
        if writer == "resnets_jax":
            write_safetensors(path, TENSORS, meta)
        else:
            stnp.save_file(TENSORS, str(path), metadata=meta)
        low = path.read_bytes()[0]
        if low not in found:
            found[low] = path
        else:
            path.unlink()
    assert sorted(found) == list(range(0, 256, 8))
    for path in found.values():
        _assert_read_as_safetensors(path, TENSORS)


@pytest.mark.parametrize("n, magic", [
    (0x04034B50, b"PK\x03\x04"),   # a zip's local header (a 67 MB header)
    (0x950480, b"\x80\x04\x95"),   # pickle protocol 4 with a FRAME (torch.save's bare pickles)
    (0x0280, b"\x80\x02"),         # pickle protocol 2 (torch's legacy format starts so)
    (0x01DE, b"\xde\x01"),         # a msgpack map16
    (0x01DF, b"\xdf\x01"),         # a msgpack map32
    (0x0183, b"\x83\x01"),         # a msgpack fixmap of 3 (our Flax msgpack files start with 0x83)
])
def test_safetensors_whose_length_mimics_another_magic(tmp_path, n, magic):
    data = _crafted(TENSORS, n)
    assert data.startswith(magic)
    path = tmp_path / "mimic.safetensors"
    path.write_bytes(data)
    _assert_read_as_safetensors(path, TENSORS)
    path.write_bytes(data[: 8 + n - 1])  # cut inside the header: refused, never read as the lookalike
    assert f"a safetensors file cut short? its header claims {n} bytes" in _error(path)


def test_safetensors_ending_like_a_zip(tmp_path):
    path = tmp_path / "tail.safetensors"
    write_safetensors(path, {**TENSORS, **ZIP_TAIL})
    assert zipfile.is_zipfile(path)  # a name- or tail-based test would call it a zip
    _assert_read_as_safetensors(path, {**TENSORS, **ZIP_TAIL})


@pytest.mark.parametrize("header, expected", [
    (b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', "truncated safetensors file (w needs bytes up to"),
    (b'{"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}', "corrupt safetensors header (w: 8 bytes for shape (3,)"),
    (b'{"w": {"dtype": "X9", "shape": [2], "data_offsets": [0, 0]}}', "bad entry 'w': unsupported safetensors dtype X9"),
    (b'{"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 0]}}', "bad entry 'w'"),
    (b'{"w": {"dtype": "F32", "data_offsets": [0, 0]}}', "bad entry 'w'"),
    (b'{"__metadata__": {"a": 1}}', "__metadata__ must map strings to strings"),
    (b'{"w": not json}', "its 15-byte header is not JSON"),
    (b'[1, 2, 3]', "not a checkpoint file (found"),
])
def test_lying_safetensors_headers(tmp_path, header, expected):
    path = tmp_path / "lying.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    assert expected in _error(path)


@pytest.mark.parametrize("n, found", [(2**40, "its header claims 1099511627776 bytes, the file has 9 after the length"),
                                      (1, "a header length of 1, shorter than any JSON object")])
def test_a_length_that_does_not_fit_is_not_read(tmp_path, n, found):
    path = tmp_path / "lying.safetensors"
    path.write_bytes(struct.pack("<Q", n) + b'{"w": {}}')
    message = _error(path)
    assert found in message
    assert "expected safetensors (an 8-byte header length, then a JSON header), a zip" in message


# ----------------------------------------------------------------------------- the other kinds

def test_flax_msgpack_and_npz_and_bare_pickle(tmp_path):
    from flax import serialization
    tree = {"params": {"stem": {"conv": {"kernel": np.ones((3, 3, 3, 4), np.float32)}}},
            "__resnets_jax__": {"format": "resnets_jax", "num_classes": "0"}}
    path = tmp_path / "flax.msgpack"
    path.write_bytes(serialization.msgpack_serialize(tree))
    assert kinds.open_checkpoint(path).kind == kinds.MSGPACK and rj.io.is_flax_checkpoint(path)
    sd = rj.load_state_dict(path)
    assert np.array_equal(sd["params/stem/conv/kernel"], np.ones((3, 3, 3, 4))) and sd.metadata["num_classes"] == "0"

    npz = tmp_path / "w.bin"  # told by its entries, not its name
    np.savez(npz, a=np.zeros(2))
    npz = npz.with_suffix(".bin.npz")
    assert kinds.open_checkpoint(npz).kind == kinds.NPZ and rj.io.formats.is_bit_npz(npz)

    bare = tmp_path / "bare.pth"
    bare.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=4))
    assert kinds.open_checkpoint(bare).kind == kinds.PICKLE
    assert "not a torch checkpoint (a pickle, but neither torch's zip format" in _error(bare)

    other_zip = tmp_path / "other.zip"
    with zipfile.ZipFile(other_zip, "w") as z:
        z.writestr("readme.txt", "hello")
    assert "a zip archive but neither torch.save's (one <folder>/data.pkl) nor numpy's" in _error(other_zip)


def test_torch_files_and_torchscript(tmp_path):
    torch = pytest.importorskip("torch")
    conv = torch.nn.Conv2d(3, 4, 3)
    zip_path, legacy_path = tmp_path / "zip.pth", tmp_path / "legacy.pth"
    torch.save(conv.state_dict(), zip_path)
    torch.save(conv.state_dict(), legacy_path, _use_new_zipfile_serialization=False)
    for path, kind in ((zip_path, kinds.TORCH_ZIP), (legacy_path, kinds.TORCH_LEGACY)):
        assert kinds.open_checkpoint(path).kind == kind
        assert np.array_equal(rj.load_state_dict(path)["weight"], conv.weight.detach().numpy())

    script = tmp_path / "script.pt"
    with pytest.warns(FutureWarning):  # torch.jit is deprecated, but its files are still about
        torch.jit.save(torch.jit.script(torch.nn.Sequential(conv, torch.nn.BatchNorm2d(4))), script)
    assert kinds.open_checkpoint(script).kind == kinds.TORCHSCRIPT
    message = _error(script)
    assert "a TorchScript archive (torch.jit.save" in message and "torch.save(" in message
    assert "safetensors.torch.save_file(" in message and "__torch__" not in message and len(message) < 400

    whole = tmp_path / "whole.pth"
    torch.save(torch.nn.Sequential(conv, torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Flatten()), whole)
    message = _error(whole)
    assert "holds a pickled module" in message and "BatchNorm2d and 2 more, which" in message and len(message) < 500


def test_kind_is_decided_once_per_conversion(tmp_path, monkeypatch):
    """``convert`` reads the source's header once: the handle travels to every later step."""
    from resnets_jax.tools.convert import convert_checkpoint
    from resnets_jax.convert import export_timm_checkpoint
    source = tmp_path / "timm.safetensors"
    export_timm_checkpoint(*rj.create_model("resnetv2_18"), source)
    calls = []
    real = kinds.parse_header
    monkeypatch.setattr(kinds, "parse_header", lambda *a: calls.append(a[0]) or real(*a))
    convert_checkpoint("resnetv2_18", tmp_path / "out.safetensors", checkpoint_path=str(source))
    assert calls == [str(source)]
