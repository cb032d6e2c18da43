"""The lowest layer: pool reading, the uid codec, the score cache, errors, files, processes, ranges."""
