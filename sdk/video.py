"""A job's videos as MP4 or WebM.

    result.export_video("kernel_viz/conv1/ch003_video.gif", "ch3.mp4")
    result.export_videos("videos/", format="webm")

Why: kernel_viz writes looping GIFs (they play everywhere, the report shows them), but slides, players
and issue trackers want MP4 or WebM. The frames are upscaled with nearest neighbour (a 5×5 canvas stays
25 crisp blocks, not a blur) to an even size the codecs accept, and a short loop is repeated so the
clip lasts a few seconds. Encoding uses the ffmpeg binary that the imageio-ffmpeg wheel ships (no
system package, no CUDA), or an ffmpeg on PATH.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

from sdk.errors import KernelscopeError

FORMATS = {
    ".mp4": ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "16", "-movflags", "+faststart"],
    ".webm": ["-c:v", "libvpx-vp9", "-pix_fmt", "yuv420p", "-crf", "24", "-b:v", "0"],
}


class VideoUnavailable(KernelscopeError):
    """No encoder here, or the format is not one this module writes; the message says what to install or use."""


def ffmpeg() -> str:
    """The ffmpeg to encode with: imageio-ffmpeg's bundled binary, else one on PATH."""
    try:
        import imageio_ffmpeg

        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError):
        found = shutil.which("ffmpeg")
        if found:
            return found
    raise VideoUnavailable("no video encoder: pip install imageio-ffmpeg (it ships ffmpeg), or put ffmpeg on PATH")


def gif_to_video(gif: bytes, dest: str | Path, *, min_size: int = 256, min_seconds: float = 3.0) -> Path:
    """Encode an animated GIF as `dest` (.mp4: H.264, .webm: VP9); return the path written."""
    from PIL import Image, ImageSequence

    dest = Path(dest)
    codec = FORMATS.get(dest.suffix.lower())
    if codec is None:
        raise VideoUnavailable(f"{dest.name}: write .mp4 or .webm")
    image = Image.open(io.BytesIO(gif))
    frames, durations = [], []
    for frame in ImageSequence.Iterator(image):
        frames.append(frame.convert("RGB"))
        durations.append(int(frame.info.get("duration") or image.info.get("duration") or 100))
    width, height = frames[0].size
    factor = max(1, -(-min_size // max(width, height)))
    out_w, out_h = width * factor, height * factor
    pad_w, pad_h = out_w + out_w % 2, out_h + out_h % 2  # yuv420p needs even sides
    frame_ms = max(sum(durations) / len(durations), 10.0)
    fps = 1000.0 / frame_ms
    loops = max(1, round(min_seconds * 1000.0 / (frame_ms * len(frames))))
    raw = bytearray()
    for frame in frames:
        big = frame.resize((out_w, out_h), Image.Resampling.NEAREST)
        if (pad_w, pad_h) != (out_w, out_h):
            canvas = Image.new("RGB", (pad_w, pad_h))
            canvas.paste(big, (0, 0))
            big = canvas
        raw += big.tobytes()
    dest.parent.mkdir(parents=True, exist_ok=True)
    command = [
        ffmpeg(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{pad_w}x{pad_h}",
        "-r", f"{fps:.6g}", "-i", "-", *codec, str(dest),
    ]
    done = subprocess.run(command, input=bytes(raw) * loops, capture_output=True, timeout=300)
    if done.returncode != 0:
        raise VideoUnavailable(f"ffmpeg could not write {dest.name}: {done.stderr.decode(errors='replace')[-500:]}")
    return dest
