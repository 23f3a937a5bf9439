// Media Source Extensions helpers: the codec string of an fMP4 init segment (MSE needs the
// exact profile and level, e.g. avc1.64001f, which only the avcC/hvcC box carries) and a
// SourceBuffer fed in order.

function find(bytes, fourcc) {
  const a = fourcc.charCodeAt(0), b = fourcc.charCodeAt(1), c = fourcc.charCodeAt(2), d = fourcc.charCodeAt(3);
  for (let i = 4; i + 3 < bytes.length; i++)
    if (bytes[i] === a && bytes[i + 1] === b && bytes[i + 2] === c && bytes[i + 3] === d) return i;
  return -1;
}

const hex2 = (n) => n.toString(16).padStart(2, "0");

// The RFC 6381 codec string of an init segment, or null when it has neither avcC nor hvcC.
export function codecString(init) {
  const bytes = new Uint8Array(init);
  let i = find(bytes, "avcC");
  if (i >= 0 && i + 7 < bytes.length) return `avc1.${hex2(bytes[i + 5])}${hex2(bytes[i + 6])}${hex2(bytes[i + 7])}`;
  i = find(bytes, "hvcC");
  if (i >= 0 && i + 16 < bytes.length) {
    const entry = find(bytes, "hev1") >= 0 ? "hev1" : "hvc1";
    const p = bytes[i + 5];
    const space = ["", "A", "B", "C"][p >> 6];
    const tier = p & 0x20 ? "H" : "L";
    let compat = 0;
    for (let k = 0; k < 4; k++) compat = (compat << 8) | bytes[i + 6 + k];
    let reversed = 0; // the compatibility flags are written bit-reversed (ISO/IEC 14496-15 E.3)
    for (let k = 0; k < 32; k++) reversed = (reversed << 1) | ((compat >>> k) & 1);
    const constraints = [...bytes.slice(i + 10, i + 16)];
    while (constraints.length && constraints[constraints.length - 1] === 0) constraints.pop();
    const tail = constraints.map((n) => n.toString(16).toUpperCase()).join(".");
    return `${entry}.${space}${p & 0x1f}.${(reversed >>> 0).toString(16).toUpperCase()}.${tier}${bytes[i + 16]}${tail ? "." + tail : ""}`;
  }
  return null;
}

// Appends buffers in order; keeps ~20 s behind the play position (a wall runs for hours).
export class Feeder {
  constructor(sourceBuffer, video, onError) {
    this.sb = sourceBuffer;
    this.video = video;
    this.pending = [];
    this.onError = onError;
    this.sb.addEventListener("updateend", () => this.next());
    this.sb.addEventListener("error", () => onError("append"));
  }

  push(buffer) {
    this.pending.push(buffer);
    this.next();
  }

  next() {
    if (this.sb.updating || !this.pending.length) return;
    const v = this.video;
    const b = v.buffered;
    if (b.length && v.currentTime - b.start(0) > 30) {
      this.sb.remove(b.start(0), v.currentTime - 20);
      return;
    }
    try {
      this.sb.appendBuffer(this.pending.shift());
    } catch (err) {
      this.onError(err.name === "QuotaExceededError" ? "quota" : "append");
    }
  }

  // Live, not a recording: stay at the newest data (after a hidden tab, a slow link...).
  keepLive() {
    const v = this.video;
    const b = v.buffered;
    if (!b.length) return;
    const end = b.end(b.length - 1);
    const t = v.currentTime;
    if (t < b.start(0) || end - t > 3) {
      v.currentTime = Math.max(b.start(b.length - 1), end - 0.5);
    } else {
      // fragments skipped by the relay for a slow viewer leave a hole up to the next keyframe;
      // the video would wait at its edge: go on from the next range
      for (let i = 0; i + 1 < b.length; i++) {
        if (t >= b.start(i) && b.end(i) - t < 0.25) {
          v.currentTime = b.start(i + 1);
          break;
        }
      }
    }
    if (v.paused) v.play().catch(() => {});
  }
}
