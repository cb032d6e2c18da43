"""The mini DataComp: a rendered world of image-text pairs in DataComp's exact layout, and runs on it.

Heavy libraries (torch, open_clip, PIL, webdataset, clip_benchmark) are imported inside functions, so the
core package imports without the ``minicomp`` extra.
"""
