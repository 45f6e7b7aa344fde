"""The recording: every Space's program appended to disk, off the stage's clock.

``recorder.py`` is the feed sink (one Space's files, pausing on a failing disk, resuming
an interrupted recording), ``vod.py`` the replay's HLS playlist, ``oggfile.py`` what an
existing Ogg file holds, and ``process.py`` the recorder's own process.
"""
