"""Moved to `lus_dist.video` (so `lus predict` imports it downward); kept only as an alias
for callers outside data_prep until they import `lus_dist.video` directly."""
from lus_dist.video import *  # noqa: F401,F403
from lus_dist.video import MediaError, read_video, write_video  # noqa: F401
