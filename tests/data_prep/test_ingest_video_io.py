"""lus_dist.io.video: every container round-trips, grayscale is detected, bad files get named errors."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from lus_dist.io.video import (MediaError, image_shape, is_monochrome, read_image, read_video,
                                to_gray_if_monochrome, video_info, write_video)


def _clip(t=6, h=40, w=48, seed=0) -> np.ndarray:
    """Smooth gradients + a moving bar: survives lossy codecs well enough to compare."""
    y, x = np.mgrid[0:h, 0:w]
    frames = [(40 + 2 * x + y + 100 * ((x // 6) % 8 == i % 8)).clip(0, 255) for i in range(t)]
    return np.stack(frames).astype(np.uint8)


@pytest.mark.parametrize("suffix", [".mp4", ".avi", ".mov", ".mpeg", ".gif"])
def test_containers_round_trip_as_grayscale(tmp_path, suffix):
    clip = _clip()
    path = write_video(tmp_path / f"c{suffix}", clip, fps=10)
    back = read_video(path)
    assert back.shape == clip.shape and back.dtype == np.uint8, "RGB-coded gray -> 1 channel"
    assert np.abs(back.astype(int) - clip).mean() < 8
    info = video_info(path)
    assert (info["height"], info["width"]) == clip.shape[1:]


def test_fitting_while_decoding_equals_fitting_the_decoded_colour_clip(tmp_path):
    """The packer's resize runs on each frame as it is decoded, in the decoder's BGR order
    (no full-resolution RGB copy); a true-colour clip must come out as if fitted after."""
    from lus_dist.shards.format import Preprocessing, fit_frame
    y, x = np.mgrid[0:48, 0:64]
    clip = np.stack([np.stack([(4 * x + i) % 256, (3 * y) % 256, 255 - (2 * x + y) % 256], -1)
                     for i in range(5)]).astype(np.uint8)              # red, green, blue differ
    path = write_video(tmp_path / "colour.avi", clip, fps=10)
    pre = Preprocessing(size=32)
    fitted = read_video(path, fit=lambda f: fit_frame(f, pre))
    decoded = read_video(path)
    assert decoded.ndim == 4, "true colour stays RGB"
    assert np.array_equal(fitted, np.stack([fit_frame(f, pre) for f in decoded]))


def _npy_round_trip(tmp_path, arr):
    np.save(tmp_path / "x.npy", arr)
    return read_video(tmp_path / "x.npy")


def test_monochrome_clips_collapse_and_colour_stays_rgb(tmp_path):
    gray = np.repeat(_clip()[..., None], 3, -1)
    assert is_monochrome(gray) and to_gray_if_monochrome(gray).shape == gray.shape[:3]
    overlay = gray.copy()
    overlay[:, :2, :2] = (255, 0, 0)                     # a small coloured marker (~0.2% of pixels)
    assert to_gray_if_monochrome(overlay).ndim == 3, "still grayscale: one channel"
    noisy = gray.astype(int) + np.random.default_rng(0).integers(-7, 8, gray.shape)   # codec chroma noise
    assert is_monochrome(noisy.clip(0, 255).astype(np.uint8))
    sepia = gray.astype(np.float32) ** [1.0, 1.05, 1.1] * [1.0, 0.7, 0.45]    # a non-linear tint
    sepia = sepia.astype(np.uint8)
    assert _npy_round_trip(tmp_path, sepia).shape == gray.shape[:3]
    doppler = gray.copy()
    doppler[:, 10:30, 10:30] = (200, 30, 60)            # a colour box over ~20% of the field
    assert not is_monochrome(doppler)
    assert _npy_round_trip(tmp_path, doppler).shape == doppler.shape
    assert read_video(tmp_path / "x.npy", gray="always").shape == doppler.shape[:3]


def test_npy_folder_and_single_image(tmp_path):
    clip = _clip(t=11)
    assert np.array_equal(_npy_round_trip(tmp_path, clip), clip)
    assert _npy_round_trip(tmp_path, clip[0]).shape == (1,) + clip.shape[1:]
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(clip):                             # frame_10 must come after frame_2
        np.save(folder / f"frame_{i}.npy", f)
    assert np.array_equal(read_video(folder), clip)
    cv2.imwrite(str(tmp_path / "still.png"), clip[3])
    assert np.array_equal(read_video(tmp_path / "still.png"), clip[3:4])
    assert image_shape(tmp_path / "still.png") == clip.shape[1:]
    assert image_shape(folder / "frame_0.npy") == clip.shape[1:]


def test_float_frames_are_scaled_and_out_of_range_rejected(tmp_path):
    np.save(tmp_path / "f.npy", np.full((2, 4, 4), 0.5, np.float32))
    assert read_video(tmp_path / "f.npy").max() == 128
    np.save(tmp_path / "bad.npy", np.full((2, 4, 4), 900.0))
    with pytest.raises(MediaError, match="bad.npy.*900"):
        read_video(tmp_path / "bad.npy")


def test_unreadable_empty_and_missing_files_are_named(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 50)
    for call in (read_video, video_info):
        with pytest.raises(MediaError, match="junk.mp4"):
            call(junk)
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match="empty.avi"):
        read_video(empty)
    zero = cv2.VideoWriter(str(tmp_path / "zero.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (16, 16), True)
    zero.release()                                    # a valid container holding no frames
    for call in (read_video, video_info):
        with pytest.raises(MediaError, match="zero.avi: the clip has 0 decodable frames"):
            call(tmp_path / "zero.avi")
    with pytest.raises(MediaError, match="nope.mov.*no such"):
        read_video(tmp_path / "nope.mov")
    with pytest.raises(MediaError, match="unknown clip type"):
        read_video(tmp_path / "x.txt")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(MediaError, match="broken.png"):
        read_image(tmp_path / "broken.png")
    (tmp_path / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(MediaError, match="broken.npy"):
        image_shape(tmp_path / "broken.npy")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(MediaError, match="no image"):
        read_video(tmp_path / "nothing")


def test_write_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "a.mp4", np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ValueError, match="cannot write"):
        write_video(tmp_path / "a.webm", np.zeros((2, 8, 8), np.uint8))
