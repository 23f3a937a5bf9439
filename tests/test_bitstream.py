"""H.264 / H.265 bitstream parsing (guetteur.media.bitstream) on real encoder output: clips made
by ffmpeg (libx264, libx265), demuxed by PyAV as MP4 samples (avcC/hvcC, length-prefixed) and as
Annex B (FFmpeg's mp4toannexb filter, as an RTSP source delivers them); plus truncated and
garbage inputs, which must raise BitstreamError and never read past a buffer."""

from __future__ import annotations

import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import av
import pytest

from guetteur.media.bitstream import (
    AnnexBConverter,
    Bitstream,
    BitstreamError,
    annexb_parameter_sets,
    annexb_units,
    first_slice,
    is_annexb,
    join_annexb,
    length_prefixed_units,
    nal_type,
    parameter_set_types,
    parse_extradata,
    sps_type,
)

CODECS = ("h264", "hevc")


@dataclass(frozen=True)
class Packets:
    """The same clip's access units in both framings."""

    codec: str
    extradata: bytes  # avcC / hvcC
    mp4: list[bytes]  # length-prefixed samples
    annexb: list[bytes]  # Annex B, parameter sets in-band before every keyframe
    keyframes: list[bool]


def _encode(out: Path, codec: str, slices: int = 1) -> Path:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.fail("ffmpeg is not installed: run `make setup` (scripts/setup-system)")
    if codec == "h264":
        enc = ["-c:v", "libx264", "-x264-params",
               f"keyint=25:min-keyint=25:scenecut=0:bframes=0:slices={slices}"]  # fmt: skip
    else:
        enc = ["-c:v", "libx265", "-x265-params",
               "keyint=25:min-keyint=25:bframes=0:scenecut=0:log-level=error"]  # fmt: skip
    subprocess.run(
        [ffmpeg, "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=192x108:rate=25",
         "-t", "2", "-preset", "ultrafast", "-pix_fmt", "yuv420p", *enc, str(out)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return out


def _demux(path: Path) -> Packets:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        codec = stream.codec_context.name
        extradata = bytes(stream.codec_context.extradata or b"")
        bsf = av.bitstream.BitStreamFilterContext(f"{codec}_mp4toannexb", stream)
        mp4, annexb, keys = [], [], []
        for p in container.demux(stream):
            if p.size == 0:
                continue
            mp4.append(bytes(p))
            keys.append(bool(p.is_keyframe))
            annexb.append(b"".join(bytes(q) for q in bsf.filter(p)))
    return Packets(codec, extradata, mp4, annexb, keys)


@pytest.fixture(scope="module", params=CODECS)
def clip(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Packets:
    codec = request.param
    return _demux(_encode(tmp_path_factory.mktemp(codec) / f"{codec}.mp4", codec))


@pytest.fixture(scope="module")
def sliced(tmp_path_factory: pytest.TempPathFactory) -> Packets:
    """H.264 with 4 slices per picture, like many IP cameras."""
    return _demux(_encode(tmp_path_factory.mktemp("sliced") / "sliced.mp4", "h264", slices=4))


def decode_count(codec: str, access_units: list[bytes]) -> int:
    """Frames a fresh decoder (no extradata) makes out of Annex B access units."""
    decoder = cast(av.VideoCodecContext, av.CodecContext.create(codec, "r"))
    frames = 0
    for data in access_units:
        frames += len(decoder.decode(av.Packet(data)))
    frames += len(decoder.decode(None))
    return frames


def without_parameter_sets(data: bytes, codec: str) -> bytes:
    kinds = parameter_set_types(codec)
    return join_annexb(u for u in annexb_units(data) if nal_type(u, codec) not in kinds)


# ----------------------------------------------------------------------------------------------
# splitting
# ----------------------------------------------------------------------------------------------


def test_both_framings_split_into_the_same_nal_units(clip: Packets) -> None:
    for mp4, annexb in zip(clip.mp4, clip.annexb, strict=True):
        assert is_annexb(annexb) and not is_annexb(mp4)
        from_mp4 = length_prefixed_units(mp4, 4)
        from_annexb = annexb_units(annexb)
        assert [u for u in from_annexb if u in from_mp4] == from_mp4
        # mp4toannexb only adds, before keyframes, what avcC/hvcC holds (x265 puts an SEI there)
        added = [u for u in from_annexb if u not in from_mp4]
        assert all(u in clip.extradata for u in added)


def test_nal_types_of_real_streams(clip: Packets) -> None:
    first = {nal_type(u, clip.codec) for u in annexb_units(clip.annexb[0])}
    second = {nal_type(u, clip.codec) for u in annexb_units(clip.annexb[1])}
    if clip.codec == "h264":
        assert {7, 8, 5} <= first  # SPS, PPS, IDR slice
        assert 1 in second and not second & {5, 7, 8}  # non-IDR slice only
    else:
        assert {32, 33, 34} <= first  # VPS, SPS, PPS
        assert first & {19, 20}  # IDR_W_RADL / IDR_N_LP
        assert max(second) < 32  # VCL (slices) only
    assert sps_type(clip.codec) in first


def test_annexb_units_accepts_3_and_4_byte_start_codes_and_skips_leading_bytes() -> None:
    sps, pps, idr = b"\x67\x42\x00\x1f", b"\x68\xce\x3c\x80", b"\x65\x88\x84\x00\x10"
    mixed = b"\xff\x00" + b"\x00\x00\x00\x01" + sps + b"\x00\x00\x01" + pps + b"\x00\x00\x01" + idr
    assert annexb_units(mixed) == [sps, pps, idr]
    assert annexb_units(b"no start code at all") == []
    assert annexb_units(b"\x00\x00\x01\x00\x00\x01") == []  # empty units are left out


def test_length_prefixed_truncated_anywhere_raises_or_yields_whole_units(clip: Packets) -> None:
    sets = parse_extradata(clip.extradata, clip.codec).parameter_sets
    units = [*sets, *length_prefixed_units(clip.mp4[0], 4)]  # a keyframe with in-band sets
    key = b"".join(len(u).to_bytes(4, "big") + u for u in units)
    boundaries = {0}
    for u in units:
        boundaries.add(max(boundaries) + 4 + len(u))
    for cut in range(len(key)):
        if cut in boundaries:
            got = length_prefixed_units(key[:cut], 4)
            assert got == units[: len(got)]
        else:
            with pytest.raises(BitstreamError):
                length_prefixed_units(key[:cut], 4)


def test_length_prefixed_rejects_bad_lengths() -> None:
    with pytest.raises(BitstreamError, match="truncated NAL length"):
        length_prefixed_units(b"\x00\x00\x00\x02\x65\x88\x00\x00", 4)
    with pytest.raises(BitstreamError, match="runs past the packet"):
        length_prefixed_units(b"\x00\x00\x00\x09\x65\x88", 4)  # oversized
    with pytest.raises(BitstreamError, match="runs past the packet"):
        length_prefixed_units(b"\x00\x00\x00\x00\x65", 4)  # zero
    with pytest.raises(BitstreamError):
        length_prefixed_units(b"\x01\x65", 5)
    assert length_prefixed_units(b"", 4) == []
    assert length_prefixed_units(b"\x02\x65\x88\x01\x41", 1) == [b"\x65\x88", b"\x41"]


def test_garbage_never_escapes_as_another_error() -> None:
    rng = random.Random(11)
    for _ in range(2000):
        data = rng.randbytes(rng.randrange(0, 64))
        size = rng.choice((1, 2, 4))
        try:
            units = length_prefixed_units(data, size)
        except BitstreamError:
            continue
        assert sum(size + len(u) for u in units) == len(data)


# ----------------------------------------------------------------------------------------------
# parameter sets and extradata
# ----------------------------------------------------------------------------------------------


def test_extradata_gives_the_in_band_parameter_sets(clip: Packets) -> None:
    bitstream = parse_extradata(clip.extradata, clip.codec)
    assert bitstream.length_size == 4
    kinds = parameter_set_types(clip.codec)
    in_band = [u for u in annexb_units(clip.annexb[0]) if nal_type(u, clip.codec) in kinds]
    assert list(bitstream.parameter_sets) == in_band
    # Annex B extradata (RTSP sprop-parameter-sets) says the same, with no length field
    sprop = parse_extradata(join_annexb(in_band), clip.codec)
    assert sprop == Bitstream(clip.codec, 0, tuple(in_band))
    assert parse_extradata(None, clip.codec) == Bitstream(clip.codec, 0, ())


def test_only_parameter_sets_are_kept_from_extradata(clip: Packets) -> None:
    sets = parse_extradata(clip.extradata, clip.codec).parameter_sets
    expected = [7, 8] if clip.codec == "h264" else [32, 33, 34]  # not x265's SEI in hvcC
    assert sorted(nal_type(u, clip.codec) for u in sets) == expected


def test_truncated_extradata_raises_bitstream_error(clip: Packets) -> None:
    full = parse_extradata(clip.extradata, clip.codec).parameter_sets
    for cut in range(1, len(clip.extradata)):
        try:
            partial = parse_extradata(clip.extradata[:cut], clip.codec)
        except BitstreamError:
            continue
        # a cut exactly after the SPS array of avcC (no PPS count): those sets, whole
        assert partial.parameter_sets == full[: len(partial.parameter_sets)]
    with pytest.raises(BitstreamError, match="too short"):
        parse_extradata(b"\x01\x64", clip.codec)


def test_garbage_extradata_raises_bitstream_error_only() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        data = b"\x01" + rng.randbytes(rng.randrange(0, 80))
        for codec in CODECS:
            try:
                parse_extradata(data, codec)
            except BitstreamError:
                pass
    with pytest.raises(BitstreamError, match=r"not H\.264 or H\.265"):
        parse_extradata(b"\x01\x02", "mjpeg")


def test_annexb_parameter_sets(clip: Packets) -> None:
    sets = annexb_parameter_sets(clip.annexb[0], clip.codec)
    kinds = parameter_set_types(clip.codec)
    assert sets is not None
    assert annexb_units(sets) == [
        u for u in annexb_units(clip.annexb[0]) if nal_type(u, clip.codec) in kinds
    ]
    assert annexb_parameter_sets(clip.annexb[1], clip.codec) is None
    assert annexb_parameter_sets(clip.annexb[0], "mjpeg") is None
    assert annexb_parameter_sets(clip.mp4[1], clip.codec) is None  # not Annex B


# ----------------------------------------------------------------------------------------------
# where pictures start
# ----------------------------------------------------------------------------------------------


def test_first_slice_finds_picture_starts(clip: Packets, sliced: Packets) -> None:
    for data in clip.annexb:
        assert first_slice(data, clip.codec) is True
    for data in clip.mp4:
        assert first_slice(data, clip.codec) is True  # MP4 samples are whole pictures
    assert first_slice(annexb_parameter_sets(clip.annexb[0], clip.codec) or b"", clip.codec) is None
    # a 4-slice picture cut into one packet per slice, as an RTSP demuxer may hand it on
    for data in sliced.annexb[:3]:
        slices = [u for u in annexb_units(data) if nal_type(u, "h264") in (1, 5)]
        assert len(slices) == 4
        assert [first_slice(join_annexb([u]), "h264") for u in slices] == [
            True,
            False,
            False,
            False,
        ]


# ----------------------------------------------------------------------------------------------
# conversion to Annex B
# ----------------------------------------------------------------------------------------------


def test_length_prefixed_packets_become_decodable_annexb(clip: Packets) -> None:
    converter = AnnexBConverter(parse_extradata(clip.extradata, clip.codec))
    out = [converter.convert(d, k)[0] for d, k in zip(clip.mp4, clip.keyframes, strict=True)]
    assert all(converter.convert(d, k)[1] for d, k in zip(clip.mp4, clip.keyframes, strict=True))
    kinds = parameter_set_types(clip.codec)
    for data, key in zip(out, clip.keyframes, strict=True):
        has_sets = any(nal_type(u, clip.codec) in kinds for u in annexb_units(data))
        assert has_sets == key  # every keyframe carries them: each one is a starting point
    second_gop = clip.keyframes.index(True, 1)
    assert decode_count(clip.codec, out) == len(out)
    assert decode_count(clip.codec, out[second_gop:]) == len(out) - second_gop


def test_sets_only_in_the_sdp_are_put_before_every_keyframe(clip: Packets) -> None:
    sprop = annexb_parameter_sets(clip.annexb[0], clip.codec)
    stripped = [without_parameter_sets(d, clip.codec) for d in clip.annexb]
    assert all(annexb_parameter_sets(d, clip.codec) is None for d in stripped)
    converter = AnnexBConverter(parse_extradata(sprop, clip.codec))
    out = []
    for data, key in zip(stripped, clip.keyframes, strict=True):
        converted, described = converter.convert(data, key)
        assert described
        if not key:
            assert converted is data  # non-keyframes: no parsing, no copy
        out.append(converted)
    assert decode_count(clip.codec, out) == len(out)


def test_in_band_sets_are_learnt_for_later_keyframes(clip: Packets) -> None:
    converter = AnnexBConverter(parse_extradata(None, clip.codec))
    first, described = converter.convert(clip.annexb[0], True)
    assert described and first is clip.annexb[0]  # has its own sets: passed as it is
    second_gop = clip.keyframes.index(True, 1)
    later = without_parameter_sets(clip.annexb[second_gop], clip.codec)
    converted, described = converter.convert(later, True)
    assert described
    assert annexb_parameter_sets(converted, clip.codec) == annexb_parameter_sets(
        clip.annexb[0], clip.codec
    )


def test_keyframe_nothing_can_describe(clip: Packets) -> None:
    converter = AnnexBConverter(parse_extradata(None, clip.codec))
    stripped = without_parameter_sets(clip.annexb[0], clip.codec)
    assert converter.convert(stripped, True) == (stripped, False)
    # add_sets=False: Annex B passes untouched, length-prefixed is only reframed
    assert converter.convert(stripped, True, add_sets=False) == (stripped, True)
    mp4 = AnnexBConverter(Bitstream(clip.codec, 4, ()))
    assert mp4.convert(clip.mp4[1], False, add_sets=False)[0] == join_annexb(
        length_prefixed_units(clip.mp4[1], 4)
    )


def test_malformed_length_prefixed_packet_raises(clip: Packets) -> None:
    converter = AnnexBConverter(parse_extradata(clip.extradata, clip.codec))
    with pytest.raises(BitstreamError):
        converter.convert(clip.mp4[1][:-1], False)
    with pytest.raises(BitstreamError):
        converter.convert(clip.mp4[0][: len(clip.mp4[0]) // 2], True)
    with pytest.raises(BitstreamError):
        converter.convert(clip.annexb[1], False)  # Annex B where lengths were announced
