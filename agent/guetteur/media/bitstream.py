"""H.264 / H.265 bitstreams: NAL units, parameter sets, avcC/hvcC extradata, Annex B.

Sources hand packets on framed as the camera or the file framed them: Annex B (start codes, RTSP
and raw cameras) or length-prefixed (MP4 samples, described by avcC/hvcC extradata). The recorder
(MPEG-TS segments) and live (PyAV's mp4 muxer) both need Annex B whose keyframes carry the
parameter sets; the sources need to know where a picture starts and which parameter sets a
keyframe carries. This module is the one place that reads those bytes.

Pure (bytes in, bytes out, no PyAV). Malformed input raises ``BitstreamError`` (a ValueError);
nothing here reads past the end of a buffer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

CODECS = ("h264", "hevc")  # FFmpeg codec names of the bitstreams this module reads

START_CODE = b"\x00\x00\x01"
_START4 = b"\x00\x00\x00\x01"  # what this module writes: the 4-byte form every parser accepts

# NAL unit types (H.264 7.4.1, H.265 7.4.2.2)
H264_IDR = 5
H264_SPS = 7
H264_PPS = 8
HEVC_VPS = 32
HEVC_SPS = 33
HEVC_PPS = 34

_PARAMETER_SETS = {
    "h264": frozenset({H264_SPS, H264_PPS}),
    "hevc": frozenset({HEVC_VPS, HEVC_SPS, HEVC_PPS}),
}


class BitstreamError(ValueError):
    """Bytes that are not the H.264/H.265 framing they claim to be."""


# ----------------------------------------------------------------------------------------------
# NAL units
# ----------------------------------------------------------------------------------------------


def nal_type(unit: bytes, codec: str) -> int:
    """``nal_unit_type`` of a NAL unit (without start code or length prefix)."""
    return (unit[0] >> 1) & 0x3F if codec == "hevc" else unit[0] & 0x1F


def parameter_set_types(codec: str) -> frozenset[int]:
    """NAL unit types of the parameter sets: H.264 SPS/PPS, HEVC VPS/SPS/PPS (none for other
    codecs)."""
    return _PARAMETER_SETS.get(codec, frozenset())


def sps_type(codec: str) -> int:
    """The NAL unit type of the SPS, the parameter set a decoder cannot start without."""
    return HEVC_SPS if codec == "hevc" else H264_SPS


def is_annexb(data: bytes) -> bool:
    """Whether ``data`` starts with an Annex B start code (3 or 4 bytes)."""
    return data.startswith((START_CODE, _START4))


def annexb_units(data: bytes) -> list[bytes]:
    """Split Annex B bytes into NAL units (without start codes). Bytes before the first start
    code are not a NAL unit and are left out; so are empty units."""
    units: list[bytes] = []
    i = data.find(START_CODE)
    while i >= 0:
        start = i + 3
        j = data.find(START_CODE, start)
        end = len(data) if j < 0 else j
        unit = data[start:end]
        if j >= 0 and unit.endswith(b"\x00"):  # the next start code was 4 bytes long
            unit = unit.rstrip(b"\x00")
        if unit:
            units.append(unit)
        i = j
    return units


def length_prefixed_units(data: bytes, length_size: int) -> list[bytes]:
    """Split a length-prefixed (MP4-style) access unit into NAL units. Raises BitstreamError when
    a length field is cut short, is zero, or runs past the end of ``data``."""
    if length_size not in (1, 2, 3, 4):
        raise BitstreamError(f"NAL length fields of {length_size} bytes do not exist")
    units: list[bytes] = []
    pos = 0
    while pos < len(data):
        if pos + length_size > len(data):
            raise BitstreamError(
                f"truncated NAL length: {len(data) - pos} bytes left at offset {pos}, "
                f"{length_size} needed"
            )
        size = int.from_bytes(data[pos : pos + length_size], "big")
        pos += length_size
        if size == 0 or pos + size > len(data):
            raise BitstreamError(
                f"NAL length {size} at offset {pos - length_size} runs past the packet "
                f"({len(data)} bytes)"
            )
        units.append(data[pos : pos + size])
        pos += size
    return units


def join_annexb(units: Iterable[bytes]) -> bytes:
    """NAL units → Annex B bytes (4-byte start codes)."""
    return b"".join(_START4 + u for u in units)


def annexb_parameter_sets(data: bytes, codec: str) -> bytes | None:
    """The parameter sets (H.264 SPS/PPS, HEVC VPS/SPS/PPS) found in an Annex B access unit, as
    Annex B extradata; None when it holds none (or is not Annex B, or not H.264/H.265)."""
    if codec not in CODECS:
        return None
    kinds = parameter_set_types(codec)
    sets = [u for u in annexb_units(data) if nal_type(u, codec) in kinds]
    return join_annexb(sets) if sets else None


def _nal_headers(data: bytes) -> list[bytes]:
    """The first 3 bytes of every NAL unit of Annex B bytes (no copy of the slice data)."""
    heads: list[bytes] = []
    i = data.find(START_CODE)
    while i >= 0:
        heads.append(data[i + 3 : i + 6])
        i = data.find(START_CODE, i + 3)
    return heads


def first_slice(data: bytes, codec: str) -> bool | None:
    """For an Annex B packet: None when it holds no picture data (parameter sets, SEI...);
    otherwise whether its first slice is the first slice of a picture (H.264
    ``first_mb_in_slice == 0``, HEVC ``first_slice_segment_in_pic_flag``). True for packets
    that are not Annex B (MP4/avcC samples are whole pictures) and for other codecs."""
    if not is_annexb(data) or codec not in CODECS:
        return True
    for head in _nal_headers(data):
        if len(head) < 3:
            continue
        if codec == "h264" and (head[0] & 0x1F) in (1, H264_IDR):
            return bool(head[1] & 0x80)  # ue(v) first_mb_in_slice: a leading 1 means 0
        if codec == "hevc" and ((head[0] >> 1) & 0x3F) < HEVC_VPS:  # VCL NAL units
            return bool(head[2] & 0x80)
    return None


# ----------------------------------------------------------------------------------------------
# Extradata: avcC (ISO 14496-15 5.3.3.1), hvcC (8.3.3.1) or Annex B
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bitstream:
    """How one stream's packets are framed, as its extradata says."""

    codec: str
    length_size: int  # 0 = Annex B; else the NAL length field size of avcC/hvcC
    parameter_sets: tuple[bytes, ...]  # NAL units (no start codes) from the extradata

    def units(self, data: bytes) -> list[bytes]:
        """The NAL units of one packet of this stream (BitstreamError if malformed)."""
        if self.length_size:
            return length_prefixed_units(data, self.length_size)
        return annexb_units(data)


def parse_extradata(extradata: bytes | None, codec: str) -> Bitstream:
    """avcC, hvcC or Annex B extradata → framing and parameter sets (other NAL units, such as the
    SEI x265 stores in hvcC, are left out). BitstreamError if unreadable."""
    if codec not in CODECS:
        raise BitstreamError(f"codec {codec} is not H.264 or H.265")
    if not extradata:
        return Bitstream(codec, 0, ())
    if extradata[0] != 1:  # Annex B parameter sets (RTSP sprop-parameter-sets, or in-band)
        units = annexb_units(extradata)
        length_size = 0
    elif codec == "h264":
        length_size, units = _parse_avcc(extradata)
    else:
        length_size, units = _parse_hvcc(extradata)
    kinds = parameter_set_types(codec)
    return Bitstream(
        codec, length_size, tuple(u for u in units if u and nal_type(u, codec) in kinds)
    )


def _sized_units(data: bytes, pos: int, count: int, what: str) -> tuple[list[bytes], int]:
    """``count`` NAL units each preceded by a 16-bit size, from ``pos``; (units, next pos)."""
    units: list[bytes] = []
    for _ in range(count):
        if pos + 2 > len(data):
            raise BitstreamError(f"{what} extradata is truncated: a parameter set size is cut")
        size = int.from_bytes(data[pos : pos + 2], "big")
        pos += 2
        if pos + size > len(data):
            raise BitstreamError(
                f"{what} extradata is truncated: a {size}-byte parameter set runs past its end"
            )
        units.append(data[pos : pos + size])
        pos += size
    return units, pos


def _parse_avcc(extradata: bytes) -> tuple[int, list[bytes]]:
    if len(extradata) < 7:
        raise BitstreamError("avcC extradata is too short")
    length_size = (extradata[4] & 0x03) + 1
    units, pos = _sized_units(extradata, 6, extradata[5] & 0x1F, "avcC")  # SPS
    if pos < len(extradata):  # some writers stop after the SPS when there is no PPS
        more, _ = _sized_units(extradata, pos + 1, extradata[pos], "avcC")  # PPS
        units += more
    return length_size, units


def _parse_hvcc(extradata: bytes) -> tuple[int, list[bytes]]:
    if len(extradata) < 23:
        raise BitstreamError("hvcC extradata is too short")
    length_size = (extradata[21] & 0x03) + 1
    units: list[bytes] = []
    pos = 23
    for _ in range(extradata[22]):  # arrays: one per NAL unit type
        if pos + 3 > len(extradata):
            raise BitstreamError("hvcC extradata is truncated: an array header is cut")
        count = int.from_bytes(extradata[pos + 1 : pos + 3], "big")  # after completeness+type
        more, pos = _sized_units(extradata, pos + 3, count, "hvcC")
        units += more
    return length_size, units


# ----------------------------------------------------------------------------------------------
# Conversion to Annex B
# ----------------------------------------------------------------------------------------------


class AnnexBConverter:
    """Rewrites one stream epoch's packets as Annex B, putting parameter sets in front of the
    keyframes that lack them: those of the extradata, replaced by those of the latest keyframe
    that carried its own (a camera may change them without a new SDP)."""

    def __init__(self, bitstream: Bitstream) -> None:
        self.bitstream = bitstream
        self.parameter_sets = bitstream.parameter_sets
        self._sps = sps_type(bitstream.codec)
        self._sets_types = parameter_set_types(bitstream.codec)

    def convert(self, data: bytes, keyframe: bool, add_sets: bool = True) -> tuple[bytes, bool]:
        """One access unit → ``(Annex B bytes, described)``.

        With ``add_sets``, a keyframe is parsed: one with an SPS passes as it is (its parameter
        sets become the ones to add later), one without gets the known parameter sets in front.
        ``described`` is False only for a keyframe that has no SPS and could be given none (no
        decoder can start there). Annex B input that needs nothing added is returned as it is,
        without a copy: the common RTSP case costs nothing per frame. BitstreamError when a
        length-prefixed packet's lengths do not fit it."""
        length_size = self.bitstream.length_size
        if not (keyframe and add_sets):
            if not length_size:
                return data, True
            return join_annexb(length_prefixed_units(data, length_size)), True
        units = self.bitstream.units(data)
        codec = self.bitstream.codec
        if any(nal_type(u, codec) == self._sps for u in units):
            self.parameter_sets = tuple(u for u in units if nal_type(u, codec) in self._sets_types)
            return (join_annexb(units) if length_size else data), True
        if not self.parameter_sets:
            return (join_annexb(units) if length_size else data), False
        if length_size:
            return join_annexb([*self.parameter_sets, *units]), True
        return join_annexb(self.parameter_sets) + data, True
