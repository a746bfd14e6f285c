"""Motion inputs of the commands that measure a tokenizer (`eval`, `viz codebook`): every format
the data pipeline reads (NLF pickles, joint arrays, SMPL parameters, BVH mocap), file or folder."""
from __future__ import annotations


def read_motion_files(path: str):
    """(name, motion) clips of every motion file under `path`, and one message per unreadable
    file."""
    from data_pipeline.readers.ingest import scan_inputs
    records, errors = scan_inputs(path)
    return [(r.source_id, r.motion) for r in records], [f"{e.path}: {e.message}" for e in errors]
