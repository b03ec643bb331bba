"""Reading and writing: video decoding, depth file formats, PNG encoding, and every path of a run folder."""
